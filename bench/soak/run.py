"""The soak itself: a fresh PostgreSQL database, the dev stack as `hairfluencer dev`
runs it (devstack.dev.running_stack, in this process, with quotas and rate limits
lifted), the load generator as a second process, and a sampler here that every minute
reads the generator's records, the CPU of every part and the PSS of every process."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common.database import PG_ADMIN_URL, fresh_database
from bench.common.paths import REPO_ROOT
from bench.soak import memory
from bench.soak.cpu import CpuMeter
from bench.soak.environment import ambient, soak_settings
from bench.soak.minutes import RecordsReader, by_kind_latency, summarize
from bench.soak.processes import Proc, listener_names, pss_sample, stack_processes
from bench.soak.report import print_minute
from bench.tryon.guards import arm, disarm, wait_for_others
from bench.tryon.uploads import selfie_bytes
from devstack.dev import running_stack
from devstack.procs import ManagedProcess, free_port, python_env
from shared.access.auth import issue_dev_token
from shared.core.config import load_settings

START_TIMEOUT = 60.0  # the generator's first record
SETTLE_S = 10.0  # after the traffic, before the idle PSS reading


def _copy_logs(data_dir: Path, logs: Path) -> None:
    """Every log the stack wrote (its servers keep theirs in sub-directories)."""
    for path in data_dir.rglob("*.log"):
        target = logs / str(path.relative_to(data_dir)).replace("/", "__")
        with contextlib.suppress(OSError):
            shutil.copyfile(path, target)


def _plan(args: argparse.Namespace, env: dict[str, str], tmp: Path, logs: Path) -> dict[str, Any]:
    settings = load_settings(env)
    users = [f"soak-user-{i:03d}" for i in range(args.users)]
    ttl = int(args.duration + args.drain + 3600)
    selfie = tmp / "selfie.jpg"
    selfie.write_bytes(selfie_bytes(args.selfie_side))
    return {"base": env["HF_BASE_URL"], "tokens": [issue_dev_token(settings, u, ttl) for u in users],
            "duration": args.duration, "drain": args.drain, "rate": args.rate,
            "max_in_flight": args.max_in_flight, "max_requests": args.max_requests,
            "tryons_per_session": args.tryons_per_session, "selfie": str(selfie),
            "upload_ready_s": 60.0, "tryon_done_s": 180.0, "request_timeout_s": 30.0,
            "tag": f"soak-{uuid.uuid4().hex[:8]}",
            "records": str(logs / "records.jsonl"), "summary": str(logs / "generator-summary.json")}


def _wait_started(reader: RecordsReader, gen: ManagedProcess) -> float:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        reader.poll()
        if reader.start is not None:
            return reader.start
        if not gen.alive():
            break
        time.sleep(0.2)
    raise RuntimeError(f"the load generator did not start:\n{gen.log_tail()}")


def _sleep_until(wall: float, gen: ManagedProcess) -> None:
    """Until the wall-clock time `wall` (the generator may end early: its bound)."""
    while time.time() < wall and gen.alive():
        time.sleep(min(0.5, max(0.0, wall - time.time())))


class Sampler:
    """The readings at each checkpoint: processes, PSS, CPU since the last one."""

    def __init__(self, meter: CpuMeter, exclude: set[int], listeners: dict[str, str]) -> None:
        self.meter, self.exclude, self.listeners = meter, exclude, listeners

    def read(self) -> tuple[list[Proc], list[dict[str, Any]], dict[str, Any]]:
        procs = stack_processes(self.exclude, self.listeners)
        return procs, pss_sample(procs), self.meter.interval(procs)


def _traffic(args: argparse.Namespace, result: dict[str, Any], gen: ManagedProcess,
             reader: RecordsReader, sampler: Sampler) -> None:
    """Minute by minute until the traffic ends: a row per minute, PSS at the warm-up's
    end and at the traffic's end (both under load), and at every minute."""
    t0 = _wait_started(reader, gen)
    sampler.read()  # CPU baseline: the stack's start-up is not the traffic's
    checkpoints = sorted({*[60.0 * m for m in range(1, int(args.duration // 60) + 1)],
                          float(args.warmup), float(args.duration)})
    for at in checkpoints:
        _sleep_until(t0 + at, gen)
        if not gen.alive() and time.time() < t0 + at:
            result["generator_ended_early_at_s"] = round(time.time() - t0, 1)
            break
        procs, pss, cpu = sampler.read()
        time.sleep(0.5)  # requests that ended before `at` are written by now
        reader.poll()
        start = result["minutes"][-1]["to_s"] if result["minutes"] else 0.0
        row = {"minute": len(result["minutes"]) + 1, "from_s": start, "to_s": at,
               **summarize([r for r in reader.records if start <= r["t"] < at]),
               "cpu": cpu, "pss": memory.totals(pss), "processes": len(procs)}
        result["minutes"].append(row)
        result["pss_samples"].append({"at_s": at, "sample": pss})
        print_minute(row)
        if at == args.warmup:
            result["pss"]["warmup"] = {"at_s": at, "sample": pss}
        if at == args.duration:
            result["pss"]["end"] = {"at_s": at, "sample": pss}


def _drain(args: argparse.Namespace, result: dict[str, Any], gen: ManagedProcess,
           reader: RecordsReader, sampler: Sampler) -> None:
    """The sessions still in flight finish (bounded by the generator's own limits,
    and here again); then the stack idles for SETTLE_S and is read once more."""
    limit = time.monotonic() + args.drain + 60
    while gen.alive() and time.monotonic() < limit:
        time.sleep(0.5)
    if gen.alive():
        result["generator_killed"] = True
        gen.stop()
    reader.poll()
    # The rows again from every record (the live rows missed any written late).
    for row in result["minutes"]:
        row.update(summarize([r for r in reader.records if row["from_s"] <= r["t"] < row["to_s"]]))
    result["drain"] = summarize([r for r in reader.records if r["t"] >= args.duration])
    time.sleep(SETTLE_S)
    _procs, pss, cpu = sampler.read()
    result["pss"]["idle_after"] = {"at_s": None, "sample": pss}
    result["drain"]["cpu"] = cpu
    result["whole_run"] = summarize(reader.records)
    result["by_kind"] = by_kind_latency(reader.records)
    summary = Path(result["settings"]["generator_summary"])
    if summary.exists():
        result["generator"] = json.loads(summary.read_text())


def run_soak(args: argparse.Namespace, result: dict[str, Any], es: contextlib.ExitStack,
             tmp: Path, logs: Path) -> None:
    if not args.no_wait:  # start-up is load too
        result["waited_for_others"] = wait_for_others()
    arm(args.setup_timeout)
    db = es.enter_context(fresh_database("hf_soak"))
    es.enter_context(ambient(soak_settings()))
    data_dir = tmp / "stack"
    es.callback(_copy_logs, data_dir, logs)  # runs after the stack stopped
    t_setup = time.monotonic()
    env = es.enter_context(running_stack(port=free_port(), data_dir=data_dir,
                                         fal_latency=args.fal_latency, database_url=db))
    plan = _plan(args, env, tmp, logs)
    plan_path = tmp / "plan.json"
    plan_path.write_text(json.dumps(plan))
    result["settings"].update({"generator_summary": plan["summary"], "records": plan["records"],
                               "base": plan["base"], "s3": env.get("HF_S3_KIND"),
                               "selfie_bytes": Path(plan["selfie"]).stat().st_size})
    result["setup_s"] = round(time.monotonic() - t_setup, 1)
    listeners = listener_names(env)
    idle = stack_processes(set(), listeners)
    result["pss"]["before_traffic"] = {"at_s": None, "sample": pss_sample(idle)}
    print(f"stack ready in {result['setup_s']} s at {plan['base']} ({len(idle)} processes, "
          f"S3: {env.get('HF_S3_KIND')}); traffic for {args.duration:.0f} s at "
          f"{args.rate} sessions/s", flush=True)
    gen = ManagedProcess([sys.executable, "-m", "bench.soak.traffic", str(plan_path)],
                         logs / "load-generator.log", env=python_env(), cwd=REPO_ROOT,
                         name="load generator")
    es.callback(gen.stop)
    arm(args.duration + args.drain + args.setup_timeout)
    gen.start()
    assert gen.pid is not None
    sampler = Sampler(CpuMeter(PG_ADMIN_URL, db, gen.pid), {gen.pid}, listeners)
    reader = RecordsReader(Path(plan["records"]))
    _traffic(args, result, gen, reader, sampler)
    _drain(args, result, gen, reader, sampler)
    warm, end = result["pss"].get("warmup"), result["pss"].get("end")
    if warm and end:
        result["pss_growth"] = memory.growth(warm["sample"], end["sample"], args.growth_limit)
        result["pss_per_process"] = memory.per_process(warm["sample"], end["sample"])
    disarm()
