"""Soak: the dev stack under 10 minutes of steady mixed traffic from a second process.

    .venv/bin/python bench/soak_bench.py                      # 10 min of traffic (~12 min)
    .venv/bin/python bench/soak_bench.py --duration 90 --warmup 30   # quick check
    .venv/bin/python bench/soak_bench.py --rate 1.5 --tryons-per-session 3

What it does (everything on 127.0.0.1; every wait is bounded; every process it starts
is stopped by PID / process group, and the database is dropped, also on failure,
Ctrl-C or SIGTERM):

Stack (not timed)
  - waits (bounded) until no other benchmark or pytest runs (bench/tryon/guards.py);
  - a fresh PostgreSQL database (bench/common/database.py), dropped at the end;
  - the dev stack exactly as `hairfluencer dev` starts it, in this process
    (devstack.dev.running_stack: LocalStack S3, Redis, the fal emulator, Celery
    worker(s) and beat, the API under gunicorn, Flower), so a change of the dev
    stack's process layout is followed without a change here. Quotas and rate limits
    are lifted through the ambient environment (still counted in Redis), with the
    soak's own JWT_DEV_SECRET.

Traffic: a second process (`python -m bench.soak.traffic`), open loop: --rate user
sessions per second, at most --max-in-flight at once, for --duration s (then the
sessions in flight finish, bounded by --drain), at most --max-requests requests. A
session is the app's flow on the real HTTP API: presign, PUT to the presigned URL,
confirm, poll the upload until validated, then --tryons-per-session times: POST
/v1/try-ons (Idempotency-Key), poll GET /v1/try-ons/{id} (If-None-Match, Retry-After)
until terminal, GET the result. Users are --users dev tokens, round robin.

Measured
  - per minute: requests by kind, errors and error rate, API latency p50/p95/p99
    (the client's clock, requests to our API only), try-ons finished and their time
    (POST -> terminal seen by polling), CPU of the app's processes, the stand-ins,
    this database's PostgreSQL backends, the load generator and everything else;
  - PSS (/proc/<pid>/smaps_rollup) of every process of the stack, found by walking
    this process's descendants and grouped by the started process's name: before the
    traffic, every minute, after the --warmup (default 60 s), at the end of the
    traffic, and idle after it; growth from warm-up to end, per group and in total,
    against --growth-limit (10 %) for the application's processes (the stand-ins for
    S3, fal and Redis are shown, not held to it);
  - problems in the stack's logs (ERROR/WARNING lines, 5xx answers).

Results: printed, and bench/results/soak-<UTC stamp>.json (+ -latest); the stack's
logs, the generator's records (one JSON line per request) and its summary are kept in
bench/results/soak-logs-<stamp>/.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as `python bench/soak_bench.py`: import the benchmarks as the package `bench`,
    # from the repository root, instead of from this folder.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.soak.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0]))
