"""Full-stack `POST /v1/uploads/presign` throughput against a bare Flask endpoint.

    .venv/bin/python bench/presign_bench.py            # load tests + profile (~2.5 min)
    .venv/bin/python bench/presign_bench.py --skip-load    # profile only (~20 s)
    .venv/bin/python bench/presign_bench.py --skip-profile # load tests only

What it does (everything on 127.0.0.1, every run bounded in time):

1. Creates a fresh PostgreSQL database, migrates it (shared.core.migrate.upgrade), and
   drops it at the end (also on Ctrl-C / failure).
2. Starts the real API (`gunicorn api.wsgi:app`) and the bare baseline
   (`gunicorn bare_app:app`, bench/bare_app.py) with identical gunicorn settings:
   2 sync workers, then 2 gthread workers x 4 threads. Real HS256 auth (dev tokens
   for 64 users, rotated per request), quotas and rate limits in Redis (limits
   lifted through the environment, so every request still does its Redis round
   trips), two rows committed per presign (upload + audit), SigV4 signing (no S3
   is contacted: the endpoint is an unused local port).
3. Loads each with `wrk --latency` (same threads/connections/duration for both),
   and records requests/s, p50/p99, CPU seconds per process group (gunicorn,
   postgres, redis, wrk) and checks that the database got a row per 201.
4. Profiles one presign in-process (WSGI calls straight into the Flask app, same
   PostgreSQL and Redis): per-component wall time measured by wrapping the real
   functions, round-trip counts (Redis commands, libpq trace), a pyinstrument
   tree, and a few "what if" micro-benchmarks of alternatives (NOT implemented
   in the app).

Results: printed, and written to bench/results/presign-<UTC stamp>.json (+ -latest).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as `python bench/presign_bench.py`: import the benchmarks as the package `bench`,
    # from the repository root, instead of from this folder.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.presign.cli import main  # noqa: E402

if __name__ == "__main__":
    main(__doc__)
