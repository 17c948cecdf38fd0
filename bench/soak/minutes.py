"""The load generator's records, read as they are written and summed per minute of
traffic (by the time a request ended): requests by kind, errors, API latency
percentiles, and the flows (upload validated, try-on finished) with their times."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common.stats import pct
from bench.soak.flow import API_KINDS, KINDS


class RecordsReader:
    """Reads the records file incrementally (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.start: float | None = None
        self.records: list[dict[str, Any]] = []

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            record = json.loads(line)
            if "start" in record:
                self.start = float(record["start"])
            else:
                self.records.append(record)


def _ms(values: list[float], p: float) -> float | None:
    v = pct(values, p)
    return None if v is None else round(v, 1)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, errors and latencies of a slice of records."""
    requests = [r for r in records if "kind" in r]
    flows = [r for r in records if "flow" in r]
    errors = [r for r in requests if not r["ok"]]
    api_ms = [r["ms"] for r in requests if r["kind"] in API_KINDS]
    tryons = [r for r in flows if r["flow"] == "try-on"]
    uploads = [r for r in flows if r["flow"] == "upload"]
    done_s = [r["ms"] / 1000 for r in tryons if r["ok"]]
    return {
        "requests": len(requests),
        "by_kind": {k: sum(1 for r in requests if r["kind"] == k) for k in KINDS},
        "errors": len(errors),
        "error_rate": round(len(errors) / len(requests), 5) if requests else None,
        "errors_by": dict(Counter(f"{r['kind']} {r['status']}" for r in errors)),
        "api_ms": {"n": len(api_ms), "p50": _ms(api_ms, 50), "p95": _ms(api_ms, 95),
                   "p99": _ms(api_ms, 99), "max": round(max(api_ms), 1) if api_ms else None},
        "uploads": dict(Counter(r["outcome"] for r in uploads)),
        "upload_ready_s": {"p50": _ms([r["ms"] / 1000 for r in uploads if r["ok"]], 50),
                           "p95": _ms([r["ms"] / 1000 for r in uploads if r["ok"]], 95)},
        "tryons": dict(Counter(r["outcome"] for r in tryons)),
        "flow_failures": sum(1 for r in flows if not r["ok"]),
        "tryon_done_s": {"p50": _ms(done_s, 50), "p95": _ms(done_s, 95), "p99": _ms(done_s, 99)},
    }


def by_kind_latency(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Whole run, per kind of request: n, errors, p50/p95/p99/max ms."""
    out = {}
    for kind in (*KINDS, "hairstyles"):
        rows = [r for r in records if r.get("kind") == kind]
        ms = [r["ms"] for r in rows]
        if rows:
            out[kind] = {"n": len(rows), "errors": sum(1 for r in rows if not r["ok"]),
                         "p50": _ms(ms, 50), "p95": _ms(ms, 95), "p99": _ms(ms, 99),
                         "max": round(max(ms), 1)}
    return out

