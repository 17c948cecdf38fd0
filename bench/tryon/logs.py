"""What the worker's and the API's logs say about a run (read from an offset: the
part the run wrote)."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common.stats import summary_ms

_SUCCEEDED = re.compile(r"Task (\S+)\[[0-9a-f-]+\] succeeded in ([0-9.]+)s")
_SUBMITTED = re.compile(r"job \S+ submitted to fal \(attempt \d+, (\d+) ms\)")
_ACCESS = re.compile(r'"(POST|GET|PUT|DELETE) (\S+)" (\d{3}) \S+ (\d+)ms')
_PROBLEMS = ("WARNING", "ERROR", "Traceback", "retry", "Retry")


def file_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def _lines(log_path: Path, offset: int) -> Iterator[bytes]:
    with log_path.open("rb") as f:
        f.seek(offset)
        yield from f


def offsets(paths: list[Path]) -> dict[Path, int]:
    """Where each log ends now: a run reads what was written after."""
    return {path: file_size(path) for path in paths}


def _all_lines(logs: dict[Path, int]) -> Iterator[bytes]:
    for path, offset in logs.items():
        yield from _lines(path, offset)


def worker_log_tasks(logs: dict[Path, int]) -> dict[str, Any]:
    """Celery's own 'succeeded in' run times and the pipeline's submit times, over
    every pool's worker log."""
    runs: dict[str, list[float]] = defaultdict(list)
    submit: list[float] = []
    other: Counter[str] = Counter()
    for raw in _all_lines(logs):
        line = raw.decode(errors="replace")
        m = _SUCCEEDED.search(line)
        if m:
            runs[m[1]].append(float(m[2]))
            continue
        m = _SUBMITTED.search(line)
        if m:
            submit.append(float(m[1]) / 1000)
            continue
        for word in _PROBLEMS:
            if word in line:
                other[word] += 1
    out: dict[str, Any] = {k: summary_ms(v) | {"total_s": round(sum(v), 2)} for k, v in sorted(runs.items())}
    out["fal_submit_call"] = summary_ms(submit)
    out["log_problem_lines"] = dict(other)
    return out


def task_spans(logs: dict[Path, int]) -> dict[str, dict[str, tuple[float, float]]]:
    """task name -> job id -> (start, end) wall clock, from Celery's 'succeeded in' lines
    (logged time - runtime = start; the first argument of every tryons.* task is the job)."""
    spans: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for raw in _all_lines(logs):
        if b"succeeded in" not in raw:
            continue
        try:
            rec = json.loads(raw)
            data = rec["data"]
            end = datetime.strptime(rec["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            job = re.search(r"'([0-9a-f-]{36})'", data.get("args", ""))
        except (ValueError, KeyError, TypeError):
            continue
        if job:
            spans[data["name"]].setdefault(job[1], (end - float(data["runtime"]), end))
    return spans


def api_log_latency(logs: dict[Path, int]) -> dict[str, Any]:
    """Server-side request times from gunicorn's access logs (%(M)s, ms): the API's
    and the webhook listener's."""
    per: dict[str, list[float]] = defaultdict(list)
    codes: Counter[str] = Counter()
    for raw in _all_lines(logs):
        m = _ACCESS.search(raw.decode(errors="replace"))
        if m:
            path = "/v1/try-ons" if m[2] == "/v1/try-ons" else m[2]
            per[f"{m[1]} {path}"].append(float(m[4]) / 1000)
            codes[f"{m[1]} {path} {m[3]}"] += 1
    return {"server_ms": {k: summary_ms(v) for k, v in per.items() if len(v) >= 5},
            "codes": dict(codes)}
