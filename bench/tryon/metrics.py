"""Task timings from the API's /metrics (Prometheus multiprocess: API and worker
share the directory), as deltas over a run."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import httpx

_METRIC = re.compile(r'^(task_duration_seconds|task_queue_latency_seconds)_(sum|count|bucket)'
                     r'\{(.*?)\}\s+([0-9.e+-]+)$')


def scrape_metrics(base: str) -> dict[str, float]:
    try:
        text = httpx.get(f"{base}/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            out[f"{m[1]}_{m[2]}{{{m[3]}}}"] = float(m[4])
    return out


def _per_task(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, Any]]:
    per: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(dict))
    for key, value in after.items():
        d = value - before.get(key, 0.0)
        m = re.match(r"(\w+?)_(sum|count|bucket)\{(.*)\}", key)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[3]))
        metric, kind, task = m[1], m[2], labels.get("task", "?")
        if kind == "bucket":
            per[task][metric].setdefault("buckets", []).append((float(labels["le"]), d))
        else:
            per[task][metric][kind] = d
    return per


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Per task: count, mean and histogram-bucket p50/p99 upper bounds, run-only deltas."""
    out: dict[str, Any] = {}
    for task, metrics in sorted(_per_task(before, after).items()):
        row: dict[str, Any] = {}
        for metric, v in metrics.items():
            n = v.get("count", 0)
            if not n:
                continue
            short = "run" if metric.startswith("task_duration") else "queue"
            row[f"{short}_n"] = int(n)
            row[f"{short}_mean_ms"] = round(v.get("sum", 0) / n * 1000, 1)
            buckets = sorted(v.get("buckets", []))
            for q in (50, 99):
                bound = next((le for le, c in buckets if c >= n * q / 100), None)
                row[f"{short}_p{q}_le_ms"] = None if bound is None else (
                    "inf" if bound == float("inf") else round(bound * 1000))
        if row:
            out[task] = row
    return out
