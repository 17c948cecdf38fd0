"""Other people's jobs share these 2 cores: wait (bounded) for a quiet machine before
a measurement, and repeat a disturbed one (bounded), keeping the quietest attempt."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from bench.common.procfs import system_busy_seconds


def add_quiet_options(parser: argparse.ArgumentParser, *, attempts: int, what: str,
                      retried: str) -> None:
    """--max-quiet-wait, --attempts (tries per `what`) and --noise-limit (above which a
    `retried` is retried)."""
    parser.add_argument("--max-quiet-wait", type=float, default=10.0,
                        help="seconds to wait at most for an idle machine before each measurement")
    parser.add_argument("--attempts", type=int, default=attempts,
                        help=f"tries per {what} when other jobs load the machine")
    parser.add_argument("--noise-limit", type=float, default=0.1,
                        help=f"cores used by other processes above which a {retried} is retried")


def wait_quiet(max_wait: float = 20.0, threshold_cores: float = 0.3,
               window: float = 1.0) -> dict[str, float]:
    """Wait (bounded) until the machine is nearly idle. Returns how long it waited and
    the last busy reading (cores busy over `window` seconds)."""
    t0 = time.monotonic()
    while True:
        b0 = system_busy_seconds()
        time.sleep(window)
        cores = (system_busy_seconds() - b0) / window
        waited = time.monotonic() - t0
        if cores <= threshold_cores or waited >= max_wait:
            return {"waited_s": round(waited, 1), "busy_cores_before": round(cores, 2)}


def quietest(measure: Callable[[], dict[str, Any]], noise: str, args: argparse.Namespace,
             on_retry: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Up to args.attempts runs of `measure` (each after wait_quiet), until one whose
    `noise` value (cores used by others) is within args.noise_limit; returns the
    quietest, with `quiet_check` and `attempts` set."""
    attempts: list[dict[str, Any]] = []
    for _ in range(args.attempts):
        quiet = wait_quiet(args.max_quiet_wait)
        r = measure()
        r["quiet_check"] = quiet
        attempts.append(r)
        if r[noise] <= args.noise_limit or len(attempts) == args.attempts:
            break
        if on_retry is not None:
            on_retry(r)
    best = min(attempts, key=lambda a: a[noise])
    best["attempts"] = len(attempts)
    return best
