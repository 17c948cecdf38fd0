"""Try-ons under load: 1,000 jobs in flight against the whole stack, in webhook mode.

    .venv/bin/python bench/tryon_bench.py                      # sync:2+hooks:2/pools (~4 min)
    .venv/bin/python bench/tryon_bench.py --jobs 1000 --latency 10 \\
        --configs 'sync:2+hooks:2/pools,sync:2/prefork:2,sync:2+hooks:2/pools;fal=threads:32'
    .venv/bin/python bench/tryon_bench.py --jobs 100 --run2-jobs 50 --run2-concurrency 1  # quick

Config syntax: API/worker, `sync:N` or `gthread:NxT` gunicorn workers (x threads),
then the worker layout: `pools` (the dev stack's: one Celery worker per pool declared
in shared/core/pools.py), `pools;name=kind:C` to change one pool, `pools;name=kind:C@q1+q2`
to add one that takes those queues from the others, or `prefork:C` / `threads:C` for a
single worker on every queue (the layout before pools by kind).

What it does (everything on 127.0.0.1; every wait is bounded; every process it starts
is stopped by PID / process group, and the database is dropped, also on failure):

Setup (not timed)
  - a fresh PostgreSQL database (CREATE DATABASE, shared.core.migrate.upgrade, DROP at the end);
  - its own redis-server (devstack.redis_server.start_redis);
  - S3 = moto's server (devstack.localstack.MotoS3; LocalStack manages ~150 ops/s here
    and would dominate), buckets made by `hairfluencer setup-storage`;
  - the fal emulator as a subprocess (devstack.fal_emulator.start_emulator_process),
    latency --latency s, --emulator-workers threads, webhooks signed as fal does;
  - the API under gunicorn (`-c python:api.gunicorn_conf`, WEBHOOK mode: PUBLIC_BASE_URL
    points at it), celery beat, and one Celery worker per pool of the layout;
  - one environment for every process: JWT_DEV_SECRET set explicitly (the bench signs
    the dev tokens with it), quotas and rate limits lifted (still counted in Redis),
    PROMETHEUS_MULTIPROC_DIR shared by API and worker so /metrics shows task timings;
  - --users users each upload one selfie through the real API (presign -> PUT ->
    confirm -> validated by the worker -> ready).

Run 1, once per --configs entry (API gunicorn and Celery worker restarted, broker purged)
  --jobs POST /v1/try-ons (Idempotency-Key, as the app sends) from --client-threads
  threads as fast as they go; measured: first POST -> last job `succeeded` (try_ons
  table), POST latency p50/p99, failures, PSS of every process idle and after the run, idle CPU per
  process, worker peak RSS (VmRSS of the Celery main
  process + children every 0.5 s: peak of the sum and of the largest process), CPU
  seconds per process group, per-job stage timings (see below), task timings.

Run 2 (emulator latency 0 via its control endpoint), once per --run2-concurrency value
  --run2-jobs try-ons, that many in flight (closed loop: each client thread starts a
  job and waits for it in the table): overhead = completed_at - created_at.

Profile: tryons.run / tryons.complete called in this process for --profile-jobs jobs,
one at a time (no Celery, no contention), their parts wrapped and timed (wall + CPU);
plus micro-measurements of single steps.

Per-job stages (all clocks are this machine's wall clock):
  created -> invoked      try_ons.created_at -> audit `tryon.invoked`.at (= when the
                          tryons.run task started: broker + worker queue wait)
  invoked -> fal accepted emulator's submitted_at (claim UPDATE, presign GET, HTTPS submit)
  fal accepted -> fal done  emulator latency (+ its own queueing, if any)
  fal done -> webhook sent  emulator's webhook pool
  webhook sent -> succeeded  API webhook (verify, enqueue) + tryons.complete queue wait
                          + complete (download, decode, re-encode x2, 2 S3 PUTs, UPDATE)

Results: printed, and written to bench/results/tryon-<UTC stamp>.json (+ -latest);
process logs are kept in bench/results/tryon-logs-<stamp>/.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as `python bench/tryon_bench.py`: import the benchmarks as the package `bench`,
    # from the repository root, instead of from this folder.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.tryon.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0]))
