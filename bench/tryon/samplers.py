"""Background samplers during a run: the worker's memory and the jobs' progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from bench.common.database import pg_url
from bench.common.procfs import status_kib


class RssSampler(threading.Thread):
    """Every `interval` s: VmRSS of the worker's main process and its children."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pids, self.interval = pids, interval
        self.stop_event = threading.Event()
        self.peak_sum = self.peak_one = 0
        self.processes_max = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            rss = [status_kib(p, "VmRSS") for p in self.pids()]
            if rss:
                self.peak_sum = max(self.peak_sum, sum(rss))
                self.peak_one = max(self.peak_one, max(rss))
                self.processes_max = max(self.processes_max, len(rss))
                self.samples += 1
            self.stop_event.wait(self.interval)

    def finish(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(5)
        return {"peak_sum_mib": round(self.peak_sum / 1024, 1),
                "peak_largest_process_mib": round(self.peak_one / 1024, 1),
                "processes": self.processes_max, "samples": self.samples}


class Progress(threading.Thread):
    """Polls try_ons (by created_at >= start) every `interval` s: a timeline."""

    def __init__(self, db: str, since: datetime, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="progress")
        self.db, self.since, self.interval = db, since, interval
        self.stop_event = threading.Event()
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self.latest: dict[str, int] = {}

    def run(self) -> None:
        with psycopg.connect(pg_url(self.db), autocommit=True) as conn:
            while not self.stop_event.is_set():
                rows = dict(conn.execute(
                    "SELECT status, count(*) FROM try_ons WHERE created_at >= %s GROUP BY status",
                    (self.since,)).fetchall())
                self.latest = rows
                self.timeline.append((time.time(), rows))
                self.stop_event.wait(self.interval)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(5)
