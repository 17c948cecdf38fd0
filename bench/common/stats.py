"""Small statistics and call timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def summary_ms(values: list[float]) -> dict[str, Any]:
    """values in seconds -> {n, p50, p90, p99, max, mean} in ms."""
    if not values:
        return {"n": 0}
    r = lambda v: round(v * 1000, 1)  # noqa: E731
    return {"n": len(values), "p50": r(pct(values, 50)), "p90": r(pct(values, 90)),
            "p99": r(pct(values, 99)), "max": r(max(values)), "mean": r(statistics.fmean(values))}


def _summary_us(samples: list[float]) -> dict[str, float]:
    samples.sort()
    n = len(samples)
    return {"n": n, "mean_us": round(statistics.fmean(samples), 1),
            "p50_us": round(samples[n // 2], 1), "p99_us": round(samples[int(n * 0.99)], 1)}


def time_calls(fn: Callable[[], Any], n: int) -> dict[str, float]:
    """n calls of fn: mean, p50 and p99 in µs."""
    return time_interleaved({"fn": fn}, n)["fn"]


def time_interleaved(fns: dict[str, Callable[[], Any]], n: int) -> dict[str, dict[str, float]]:
    """Like time_calls for each variant, round-robin so that drift hits all alike."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(n):
        for k, fn in fns.items():
            t0 = time.perf_counter_ns()
            fn()
            samples[k].append((time.perf_counter_ns() - t0) / 1000)
    return {k: _summary_us(v) for k, v in samples.items()}
