"""Bounds on a run: a hard timeout per phase (SIGALRM), SIGTERM as Ctrl-C, and waiting
(bounded) for other benchmarks and test suites, whose load would overlap ours."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

OTHERS_PATTERNS = ("presign_bench|wrk ", "pytest", "bench/(tryon|soak|validation)_bench")


class HardTimeout(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise HardTimeout("hard timeout reached")


def _terminate(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("terminated")


def install_handlers() -> None:
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGTERM, _terminate)


def arm(seconds: float) -> None:
    """(Re)arm the hard timeout of the phase that starts now."""
    signal.alarm(max(1, int(seconds)))


def disarm() -> None:
    signal.alarm(0)


def _ourselves() -> set[int]:
    """This process and its ancestors (a `timeout` or shell wrapping the benchmark)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _busy() -> list[str]:
    busy = []
    for pattern in OTHERS_PATTERNS:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
        pids = [p for p in out.split() if int(p) not in _ourselves()]
        if pids:
            busy.append(f"{pattern}: {' '.join(pids)}")
    return busy


def wait_for_others(max_wait: float = 1200.0, interval: float = 10.0) -> dict[str, Any]:
    """Wait until no presign benchmark / wrk / pytest runs (bounded): measurements
    must not overlap theirs."""
    t0 = time.monotonic()
    seen: set[str] = set()
    while True:
        busy = _busy()
        waited = time.monotonic() - t0
        if not busy:
            if waited > 1:
                print(f"  (waited {waited:.0f} s for other benchmarks/tests: {sorted(seen)})", flush=True)
            return {"waited_s": round(waited, 1), "seen": sorted(seen)}
        if not seen or set(busy) - seen:
            print(f"  waiting for other load to finish: {busy}", flush=True)
        seen.update(busy)
        if waited >= max_wait:
            print(f"  WARNING: still busy after {max_wait:.0f} s, measuring anyway: {busy}",
                  flush=True)
            return {"waited_s": round(waited, 1), "seen": sorted(seen), "gave_up": True}
        time.sleep(interval)
