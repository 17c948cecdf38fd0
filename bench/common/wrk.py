"""Running wrk (bounded by -d plus a hard timeout), parsing its output, and the CPU
used meanwhile by groups of processes and by everything else on the machine."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common.procfs import CLK_TCK, cpu_delta, cpu_snapshot, system_busy_seconds

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _to_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise ValueError(f"unparsed latency {value!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    if m:
        res["requests"] = int(m.group(1))
        res["elapsed_ms"] = _to_ms(m.group(2))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.MULTILINE)
        res[f"p{pct}_ms"] = _to_ms(m.group(1)) if m else None
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        res["avg_ms"], res["max_ms"] = _to_ms(m.group(1)), _to_ms(m.group(3))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                    map(int, m.groups()), strict=True)) if m else {}
    return res


def run_wrk(url: str, script: Path, *, threads: int, connections: int, duration: int,
            cpu_groups: dict[str, Callable[[], list[int]]] | None = None) -> dict[str, Any]:
    """Run wrk and measure the CPU of process groups (label -> callable giving PIDs)."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
           "--latency", "-s", str(script), url]
    groups = {k: f() for k, f in (cpu_groups or {}).items()}
    before = {k: cpu_snapshot(p) for k, p in groups.items()}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = system_busy_seconds()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    wall = time.monotonic() - t0
    res = parse_wrk(out)
    res["command"] = " ".join(cmd)
    res["raw"] = out
    after = {k: cpu_snapshot(list(before[k])) for k in groups}
    deltas = {k: cpu_delta(before[k], after[k]) for k in groups}
    cpu = {k: sum(d) / CLK_TCK for k, d in deltas.items()}
    res["cpu_user_sys_seconds"] = {k: [round(d[0] / CLK_TCK, 2), round(d[1] / CLK_TCK, 2)]
                                   for k, d in deltas.items()}
    # wrk's own CPU: the only child reaped during this call (gunicorn is still running).
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["wrk"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    busy = system_busy_seconds() - busy0
    if groups:
        # Everything else on the box (other users' tests, kernel softirq, ...): noise gauge.
        cpu["other"] = max(0.0, busy - sum(cpu.values()))
    res["machine_busy_fraction"] = round(busy / (wall * (os.cpu_count() or 1)), 3)
    res["cpu_seconds"] = {k: round(v, 2) for k, v in cpu.items()}
    res["cpu_seconds_total"] = round(sum(cpu.values()), 2)
    res["wall_seconds"] = round(wall, 2)
    n = res.get("requests") or 0
    if n:
        res["cpu_us_per_request"] = {k: round(v / n * 1e6) for k, v in cpu.items()}
    return res
