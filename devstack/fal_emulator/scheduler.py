"""The emulator's clock: one thread running short callbacks at given times.

Jobs move through this scheduler (a heap of timers) and a small worker pool, so
thousands of requests can be in flight without a thread each.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Scheduler:
    """One thread running short callbacks at given monotonic times."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fal-emulator-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), fn, args))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(timeout=(self._heap[0][0] - now) if self._heap else None)
                if self._stopped:
                    return
                _, _, fn, args = heapq.heappop(self._heap)
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one bad callback must not stop the clock
                log.exception("scheduled callback %s failed", fn)
