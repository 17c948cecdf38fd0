"""CPU seconds per process group over a run (API, worker, beat, the stand-ins,
PostgreSQL, this client)."""

from __future__ import annotations

import os

from bench.common.procfs import CLK_TCK, Snapshot, cpu_delta, cpu_snapshot, pids_by_comm
from bench.tryon.stack import Stack


def cpu_groups(stack: Stack, others: dict[str, list[int]]) -> dict[str, list[int]]:
    groups = {"api (gunicorn)": stack.api_pids(), "worker (celery)": stack.worker_pids(),
              "beat": stack.beat_pids()}
    groups.update(others)
    groups["postgres"] = pids_by_comm("postgres")
    groups["bench client"] = [os.getpid()]
    return groups


def cpu_seconds(before: dict[str, Snapshot], groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU used since `before` by each group. PostgreSQL backends that appeared during
    the run (new pool connections) count from zero; other groups' PIDs are fixed."""
    out = {}
    for name in groups:
        if name == "postgres":
            after = cpu_snapshot(pids_by_comm("postgres"))
            base = {pid: before[name].get(pid, (0, 0)) for pid in after}
            u, s = cpu_delta(base, after)
        else:
            u, s = cpu_delta(before[name], cpu_snapshot(list(before[name])))
        out[name] = round((u + s) / CLK_TCK, 2)
    return out
