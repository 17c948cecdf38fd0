"""The measured runs. Run 1: every job POSTed as fast as the client pool goes, then
waited for. Run 2: emulator latency 0, a few jobs in flight, each waited for."""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from bench.common.machine import loadavg
from bench.common.procfs import cpu_snapshot, system_busy_seconds
from bench.common.stats import summary_ms
from bench.tryon.clients import Post, closed_loop, fire_all
from bench.tryon.config import Plan
from bench.tryon.cpu import cpu_groups, cpu_seconds
from bench.tryon.logs import api_log_latency, offsets, task_spans, worker_log_tasks
from bench.tryon.metrics import metric_deltas, scrape_metrics
from bench.tryon.records import job_rows, stage_profile
from bench.tryon.samplers import Progress, RssSampler
from bench.tryon.stack import Stack
from devstack.fal_emulator import FalEmulatorProcess

EMULATOR_STATS = ("submits", "enqueued", "status_calls", "result_calls", "webhooks_sent",
                  "webhook_attempts", "webhooks_failed", "media_downloads", "completed",
                  "in_progress", "in_queue")


class Window:
    """What one run observes, from before its first POST: the emulator (reset, at the
    run's latency), the task metrics, the logs from their current ends, worker RSS."""

    def __init__(self, stack: Stack, fal: FalEmulatorProcess, latency: float) -> None:
        fal.configure(latency_seconds=latency)
        fal.reset()
        self.stack, self.fal, self.latency = stack, fal, latency
        self.since = datetime.now(UTC)
        time.sleep(0.05)
        self.metrics0 = scrape_metrics(stack.base)
        self.wlogs = offsets(stack.worker_logs())
        self.alogs = offsets([p for p in (stack.api.log_path,  # type: ignore[union-attr]
                                          stack.hooks_log()) if p])
        self.rss = RssSampler(stack.worker_pids)
        self.rss.start()

    def collect(self, db: str) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        """The jobs' rows, the emulator's stats, and stages, task timings and API times."""
        time.sleep(1.0)  # let the last log lines land
        metrics1 = scrape_metrics(self.stack.base)
        emu = self.fal.stats(include_requests=True)
        rows = job_rows(db, self.since)
        return rows, emu, {
            "stages": stage_profile(rows, emu, self.latency, task_spans(self.wlogs)),
            "tasks_metrics": metric_deltas(self.metrics0, metrics1),
            "tasks_log": worker_log_tasks(self.wlogs),
            "api_log": api_log_latency(self.alogs),
        }


def _wait_done(progress: Progress, accepted: int, first_post: float, last_response: float,
               timeout: float) -> float | None:
    """Until every accepted job succeeded or failed (a poll after the last response says
    so); prints progress every 10 s. The wall-clock time it saw that, or None."""
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while time.monotonic() < deadline:
        c = progress.latest
        done = c.get("succeeded", 0) + c.get("failed", 0)
        if done >= accepted and progress.timeline and progress.timeline[-1][0] > last_response:
            return time.time()
        if time.monotonic() - last_print > 10:
            last_print = time.monotonic()
            print(f"    t+{time.time() - first_post:5.0f}s {dict(sorted(c.items()))}", flush=True)
        time.sleep(0.25)
    return None


def run_burst(stack: Stack, fal: FalEmulatorProcess, db: str, plan: Plan,
              tokens: dict[str, str], args: argparse.Namespace, others: dict[str, list[int]],
              tag: str) -> dict[str, Any]:
    """Run 1: every job POSTed as fast as the client pool goes; wait for all of them."""
    window = Window(stack, fal, args.latency)
    groups = cpu_groups(stack, others)
    cpu0 = {k: cpu_snapshot(v) for k, v in groups.items()}
    busy0, t_mono0 = system_busy_seconds(), time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    progress = Progress(db, window.since)
    progress.start()

    recs = fire_all(stack.base, plan, tokens, args.client_threads, tag, timeout=args.run_timeout / 2)
    accepted = [r for r in recs if r.status == 202]
    first_post = min(r.t_send for r in recs if r.t_send)
    last_response = max(r.t_send + r.latency for r in recs if r.t_send)
    print(f"  {len(accepted)}/{len(recs)} accepted in {last_response - first_post:.1f} s; "
          "waiting for completion", flush=True)
    finished_seen = _wait_done(progress, len(accepted), first_post, last_response, args.run_timeout)
    progress.finish()
    rss = window.rss.finish()
    wall = time.monotonic() - t_mono0
    cpu = cpu_seconds(cpu0, groups)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu["bench client"] = round((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 2)
    busy = system_busy_seconds() - busy0
    rows, emu, observed = window.collect(db)

    statuses = Counter(r["status"] for r in rows)
    done_rows = [r for r in rows if r["status"] == "succeeded" and r["completed_at"]]
    last_done = max((r["completed_at"].timestamp() for r in done_rows), default=None)
    invoked = [r["invoked_at"].timestamp() for r in rows if r["invoked_at"]]
    n_jobs = max(1, len(accepted))
    runs = observed["tasks_metrics"].get("tryons.run", {}).get("run_n") or 0
    return {
        "tryons_run_deliveries_per_job": round(runs / n_jobs, 3),
        "config": stack.config.label,  # type: ignore[union-attr]
        "jobs_planned": len(plan),
        "accepted_202": len(accepted),
        "post_errors": dict(Counter(str(r.status) for r in recs if r.status != 202)),
        "statuses": dict(statuses),
        "failed": statuses.get("failed", 0),
        "error_codes": dict(Counter(r["error_code"] for r in rows if r["error_code"])),
        "all_done": finished_seen is not None,
        "makespan_s": round(last_done - first_post, 2) if last_done and finished_seen else None,
        "makespan_to_last_succeeded_s": round(last_done - first_post, 2) if last_done else None,
        "posting_s": round(last_response - first_post, 2),
        "post_rate_per_s": round(len(recs) / max(1e-9, last_response - first_post), 1),
        "all_invoked_after_s": round(max(invoked) - first_post, 2) if invoked else None,
        "post_latency_ms": summary_ms([r.latency for r in accepted]),
        "worker_rss": rss,
        "cpu_seconds": cpu,
        "cpu_ms_per_job": {k: round(v / n_jobs * 1000, 1) for k, v in cpu.items()},
        "machine_busy_cpu_s": round(busy, 1),
        "machine_busy_fraction": round(busy / (wall * (os.cpu_count() or 1)), 3),
        "wall_s": round(wall, 1),
        **observed,
        "emulator": {k: emu.get(k) for k in EMULATOR_STATS},
        "timeline": [(round(t - first_post, 1), c) for t, c in progress.timeline[:: max(
            1, len(progress.timeline) // 60)]],
        "loadavg_after": loadavg(),
    }


def run_overhead(stack: Stack, fal: FalEmulatorProcess, db: str, plan: Plan,
                 tokens: dict[str, str], args: argparse.Namespace, tag: str,
                 concurrency: int) -> dict[str, Any]:
    """Run 2: emulator latency 0, a few jobs in flight, each waited for in the table."""
    window = Window(stack, fal, 0.0)
    t0 = time.monotonic()
    recs, timeouts = closed_loop(stack.base, db, plan, tokens, concurrency, tag, args.run_timeout)
    wall = time.monotonic() - t0
    rss = window.rss.finish()
    rows, _emu, observed = window.collect(db)
    statuses = Counter(r["status"] for r in rows)
    overhead = [r["completed_at"].timestamp() - r["created_at"].timestamp()
                for r in rows if r["status"] == "succeeded" and r["completed_at"]]
    accepted: list[Post] = [r for r in recs if r.status == 202]
    return {
        "config": stack.config.label,  # type: ignore[union-attr]
        "jobs": len(plan), "concurrency": concurrency,
        "accepted_202": len(accepted), "statuses": dict(statuses),
        "failed": statuses.get("failed", 0), "not_finished_in_60s": len(timeouts),
        "wall_s": round(wall, 1),
        "overhead_ms": summary_ms(overhead),
        "post_latency_ms": summary_ms([r.latency for r in accepted]),
        **observed,
        "worker_rss": rss,
    }
