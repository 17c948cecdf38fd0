"""Processes and their CPU time, read from /proc."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

Snapshot = dict[int, tuple[int, int]]


def descendants(pid: int) -> list[int]:
    """pid and all its descendants (by /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}").exists() else []:
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def pids_by_comm(*names: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names:
            out.append(int(entry.name))
    return out


def status_kib(pid: int | str, field: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM, ...); 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_snapshot(pids: list[int]) -> Snapshot:
    """pid -> (utime, stime) clock ticks (all threads) of the processes still alive."""
    snap = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        snap[pid] = (int(fields[11]), int(fields[12]))
    return snap


def cpu_delta(before: Snapshot, after: Snapshot) -> tuple[int, int]:
    """(user, sys) ticks used between two snapshots by processes present in both
    (a process that ended, e.g. another user's PostgreSQL backend, cannot be
    accounted and would otherwise give negative numbers)."""
    user = system = 0
    for pid in before.keys() & after.keys():
        user += after[pid][0] - before[pid][0]
        system += after[pid][1] - before[pid][1]
    return user, system


def system_busy_seconds() -> float:
    """Busy CPU time of the whole machine (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def pss_kib(pid: int) -> int:
    """Proportional set size (kB) from /proc/<pid>/smaps_rollup: shared pages (a
    prefork child's inherited code) counted once across the processes sharing them,
    where RSS counts them in each; 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
