"""Result files (bench/results/<name>-<UTC stamp>.json, plus -latest) and plain tables."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common.paths import RESULTS_DIR


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{utc_stamp()}.json"
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(text)
    (RESULTS_DIR / f"{name}-latest.json").write_text(text)
    return path


def print_table(rows: list[list[Any]], header: list[str]) -> None:
    cols = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    for j, r in enumerate(cols):
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()
