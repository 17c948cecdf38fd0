"""What the try-on benchmark prints after each run and after the profile."""

from __future__ import annotations

import json
import os
from typing import Any

from bench.common.report import print_table


def print_stages(stages: dict[str, Any]) -> None:
    rows = [[k, v.get("n"), v.get("p50"), v.get("p90"), v.get("p99"), v.get("max")]
            for k, v in stages.items()]
    print_table(rows, ["stage", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"])


def print_tasks(res: dict[str, Any]) -> None:
    rows = []
    for task, m in res["tasks_metrics"].items():
        log = res["tasks_log"].get(task, {})
        rows.append([task, m.get("run_n"), m.get("run_mean_ms"), log.get("p50"), log.get("p99"),
                     log.get("total_s"), m.get("queue_n", 0)])
    if rows:
        print_table(rows, ["task", "n", "run mean ms", "run p50", "run p99", "run total s",
                           "queue-latency observations"])
    sub = res["tasks_log"].get("fal_submit_call", {})
    print(f"  fal submit call (worker log): p50 {sub.get('p50')} ms, p99 {sub.get('p99')} ms")
    print(f"  API server-side: {json.dumps(res['api_log']['server_ms'])}")
    print(f"  worker log problem lines: {res['tasks_log'].get('log_problem_lines')}")


def print_burst(res: dict[str, Any]) -> None:
    print(f"\n== Run 1 [{res['config']}]: {res['accepted_202']} try-ons, "
          f"latency {res.get('latency_s', '?')} s ==")
    print(f"  first POST -> last succeeded: {res['makespan_to_last_succeeded_s']} s "
          f"(all done: {res['all_done']}); posting took {res['posting_s']} s "
          f"({res['post_rate_per_s']}/s); all invoked after {res['all_invoked_after_s']} s")
    five_a = next((v for k, v in res["stages"].items() if k.startswith("5a")), {})
    four = next((v for k, v in res["stages"].items() if k.startswith("4 ")), {})
    print(f"  stage 5a (webhook sent -> tryons.complete starts) p99 {five_a.get('p99')} ms "
          f"(stage 4, the emulator's webhook pool: p99 {four.get('p99')} ms); "
          f"tryons.run deliveries per job {res.get('tryons_run_deliveries_per_job')}")
    pl = res["post_latency_ms"]
    print(f"  POST latency p50 {pl.get('p50')} ms, p99 {pl.get('p99')} ms, max {pl.get('max')} ms;"
          f" failed {res['failed']}; statuses {res['statuses']}; POST errors {res['post_errors']}")
    w = res["worker_rss"]
    print(f"  worker RSS peak: sum {w['peak_sum_mib']} MiB, largest process "
          f"{w['peak_largest_process_mib']} MiB ({w['processes']} processes)")
    print(f"  CPU s: {res['cpu_seconds']} (machine busy {res['machine_busy_cpu_s']} s, "
          f"{res['machine_busy_fraction'] * 100:.0f} % of {os.cpu_count()} cores over {res['wall_s']} s)")
    print_layout(res.get("layout"))
    print_stages(res["stages"])
    print_tasks(res)


def print_layout(layout: dict[str, Any] | None) -> None:
    """PSS (MiB, idle and after the run) and idle CPU (ms/s) of each process."""
    if not layout:
        return
    print("  process group           PSS idle (MiB)      PSS after (MiB)     idle CPU (ms/s)")
    for name, idle in layout["pss_mib_idle"].items():
        after = layout["pss_mib_after"].get(name, [])
        cpu = layout["idle_cpu_ms_per_s"].get(name, [])
        print(f"  {name:<24}{sum(idle):>7.1f} {str(idle):<12}{sum(after):>7.1f} "
              f"{str(after):<12}{sum(cpu):>6.1f} {cpu}")


def print_overhead(r2: dict[str, Any]) -> None:
    o = r2["overhead_ms"]
    print(f"  overhead (completed_at - created_at): p50 {o.get('p50')} ms, "
          f"p90 {o.get('p90')} ms, p99 {o.get('p99')} ms (n={o.get('n')}); "
          f"failed {r2['failed']}; POST p50 {r2['post_latency_ms'].get('p50')} ms, "
          f"wall {r2['wall_s']} s")
    print_stages(r2["stages"])
    print_tasks(r2)


def print_profile(prof: dict[str, Any]) -> None:
    print(f"  outcomes {prof['outcomes']}")
    print_table([["- " * k.count(" > ") + k.split(" > ")[-1], v["calls_per_job"],
                  v["wall_ms_per_job"], v["cpu_ms_per_job"]] for k, v in prof["per_job"].items()],
                ["part (per job)", "calls", "wall ms", "cpu ms"])


def print_micro(micro: dict[str, Any]) -> None:
    print("\nmicro-measurements (this process, not timed runs):")
    for k, v in micro.items():
        print(f"  {k}: {v}")
