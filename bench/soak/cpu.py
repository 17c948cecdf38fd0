"""CPU used per interval by the stack's process groups, the load generator, this
database's PostgreSQL backends and everything else on the machine (a noise gauge:
other people's jobs share these cores)."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

from bench.common.database import pg_url
from bench.common.procfs import CLK_TCK, descendants, system_busy_seconds
from bench.soak.processes import Proc, cpu_ticks


def postgres_backends(admin_url: str, database: str) -> list[int]:
    """The PIDs of the backends connected to `database` (PostgreSQL is not ours to
    walk: its backends are children of the postmaster)."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                            (database,)).fetchall()
    return [int(r[0]) for r in rows]


class CpuMeter:
    """`interval()` returns the cores each part used since the previous call. A process
    first seen in an interval counts from zero (a recycled pool child, a new database
    connection); one that ended before the reading loses its last part."""

    def __init__(self, admin_url: str, db_url: str, generator_pid: int) -> None:
        self.admin_url = admin_url
        self.database = pg_url(db_url).rsplit("/", 1)[1]
        self.generator_pid = generator_pid
        self.ticks: dict[int, int] = {}
        self.busy = system_busy_seconds()
        self.at = time.monotonic()

    def interval(self, procs: list[Proc]) -> dict[str, Any]:
        parts: dict[str, list[int]] = {}
        for p in procs:
            parts.setdefault(p.group, []).append(p.pid)
        parts["load generator"] = descendants(self.generator_pid)
        try:
            parts["postgres (this database)"] = postgres_backends(self.admin_url, self.database)
        except psycopg.Error:
            parts["postgres (this database)"] = []
        now_ticks: dict[int, int] = {}
        used: dict[str, float] = {}
        for name, pids in parts.items():
            ticks = cpu_ticks(pids)
            now_ticks.update(ticks)
            used[name] = sum(t - self.ticks.get(pid, 0) for pid, t in ticks.items()) / CLK_TCK
        busy, at = system_busy_seconds(), time.monotonic()
        wall = max(1e-6, at - self.at)
        machine = busy - self.busy
        stand_ins = {p.group for p in procs if p.stand_in}
        app = sum(v for k, v in used.items() if k in {p.group for p in procs} - stand_ins)
        out = {
            "wall_s": round(wall, 1),
            "cores": {k: round(v / wall, 3) for k, v in used.items()},
            "app_cores": round(app / wall, 3),
            "stand_in_cores": round(sum(used[k] for k in stand_ins if k in used) / wall, 3),
            "machine_busy_pct": round(machine / (wall * (os.cpu_count() or 1)) * 100, 1),
            "other_cores": round(max(0.0, machine - sum(used.values())) / wall, 3),
        }
        self.ticks, self.busy, self.at = now_ticks, busy, at
        return out
