"""Where the benchmarks live and write."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent  # gunicorn, celery, hairfluencer
