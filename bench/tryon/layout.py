"""What each process of the worker layout costs: PSS, and CPU while idle."""

from __future__ import annotations

import time
from typing import Any

from bench.common.procfs import CLK_TCK, cpu_delta, cpu_snapshot, pss_kib
from bench.tryon.stack import Stack

IDLE_SECONDS = 5.0


def _processes(stack: Stack) -> dict[str, list[int]]:
    groups = {f"{name} (celery)": pids for name, pids in stack.pool_pids().items()}
    groups["api (gunicorn)"] = stack.api_pids()
    groups["beat"] = stack.beat_pids()
    return groups


def pss_by_process(stack: Stack) -> dict[str, list[float]]:
    """MiB of PSS of each process (main process first), by group."""
    return {name: [round(pss_kib(pid) / 1024, 1) for pid in pids]
            for name, pids in _processes(stack).items()}


def idle_cpu(stack: Stack, seconds: float = IDLE_SECONDS) -> dict[str, list[float]]:
    """CPU milliseconds per second each process uses with nothing to do (the
    broker's polls, heartbeats, the beat's passes), by group."""
    groups = _processes(stack)
    before = {name: cpu_snapshot(pids) for name, pids in groups.items()}
    time.sleep(seconds)
    out = {}
    for name, pids in groups.items():
        after = cpu_snapshot(pids)
        out[name] = [round(sum(cpu_delta({p: before[name][p]}, {p: after[p]}))
                           / CLK_TCK / seconds * 1000, 1)
                     for p in pids if p in before[name] and p in after]
    return out


def layout_costs(stack: Stack) -> dict[str, Any]:
    return {"idle_cpu_ms_per_s": idle_cpu(stack), "pss_mib_idle": pss_by_process(stack)}
