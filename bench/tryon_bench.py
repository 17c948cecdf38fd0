"""Try-ons under load: 1,000 jobs in flight against the whole stack, in webhook mode.

    .venv/bin/python bench/tryon_bench.py                      # sync:2/prefork:2 (~4 min)
    .venv/bin/python bench/tryon_bench.py --jobs 1000 --latency 10 \\
        --configs sync:2/prefork:2,sync:2/prefork:4,sync:2/threads:8,gthread:2x4/prefork:2
    .venv/bin/python bench/tryon_bench.py --jobs 100 --run2-jobs 50 --run2-concurrency 1  # quick

Config syntax: API/worker, `sync:N` or `gthread:NxT` gunicorn workers (x threads),
then `prefork:C`, `threads:C` or `solo:1` Celery pool and concurrency.

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
    points at it), celery beat, and a Celery worker on default,uploads,tryons,tryons_done,maintenance;
  - one environment for every process: JWT_DEV_SECRET set explicitly (the bench signs
    the dev tokens with it), quotas and rate limits lifted (still counted in Redis),
    PROMETHEUS_MULTIPROC_DIR shared by API and worker so /metrics shows task timings;
  - --users users each upload one selfie through the real API (presign -> PUT ->
    confirm -> validated by the worker -> ready).

Run 1, once per --configs entry (API gunicorn and Celery worker restarted, broker purged)
  --jobs POST /v1/try-ons (Idempotency-Key, as the app sends) from --client-threads
  threads as fast as they go; measured: first POST -> last job `succeeded` (try_ons
  table), POST latency p50/p99, failures, worker peak RSS (VmRSS of the Celery main
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

import argparse
import base64
import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
from _util import (
    CLK_TCK,
    REPO_ROOT,
    RESULTS_DIR,
    cpu_delta,
    cpu_snapshot,
    git_revision,
    machine_info,
    pids_by_comm,
    print_table,
    system_busy_seconds,
    write_result,
)
from _util import (
    fresh_database as fresh_pg_database,
)

from devstack.fal_emulator import FalEmulatorProcess, start_emulator_process
from devstack.localstack import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoS3
from devstack.procs import ManagedProcess, free_port, wait_until
from devstack.redis_server import RedisServer, start_redis

PG_ADMIN_URL = os.environ.get("HF_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
BIN = Path(sys.executable).parent
DEV_SECRET = "tryon-bench-only-hs256-secret-0123456789abcdefghijklmnop"  # noqa: S105
QUEUES = "default,uploads,tryons,tryons_done,maintenance"
STYLES = ["pixie-cut", "long-waves", "bob", "curly-afro", "buzz-cut", "copper-balayage"]
SOURCE_IMAGE = REPO_ROOT / "tests" / "fixtures" / "astronaut.jpg"
# Inherited variables that would change the app under test.
SCRUB = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR",
         "SENTRY_DSN", "JWT_JWKS_URL", "JWT_ISSUER", "S3_PUBLIC_ENDPOINT_URL",
         "TRUSTED_PROXY_COUNT", "WEBHOOK_SECRET", "FAL_QUEUE_RUN_HOST", "HF_TEST_S3_ENDPOINT",
         "DELETE_SELFIE_AFTER_JOB", "FACE_DETECTION_ENABLED", "CLAMD_ADDRESS", "NSFW_DETECTOR")
OTHERS_PATTERN = "presign_bench|wrk "


class HardTimeout(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise HardTimeout("hard timeout reached")


def _terminate(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("terminated")


def arm(seconds: float) -> None:
    """(Re)arm the hard timeout of the phase that starts now."""
    signal.alarm(max(1, int(seconds)))


# --- small statistics ------------------------------------------------------------

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


# --- other people's load ------------------------------------------------------------

def wait_for_others(max_wait: float = 1200.0, interval: float = 10.0) -> dict[str, Any]:
    """Wait until no presign benchmark / wrk / pytest runs (bounded): measurements
    must not overlap theirs."""
    t0 = time.monotonic()
    seen: set[str] = set()
    while True:
        busy = []
        for pattern in (OTHERS_PATTERN, "pytest"):
            out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
            pids = [p for p in out.split() if int(p) != os.getpid()]
            if pids:
                busy.append(f"{pattern}: {' '.join(pids)}")
        waited = time.monotonic() - t0
        if not busy:
            if waited > 1:
                print(f"  (waited {waited:.0f} s for other benchmarks/tests: {sorted(seen)})", flush=True)
            return {"waited_s": round(waited, 1), "seen": sorted(seen)}
        if not seen or set(busy) - seen:
            print(f"  waiting for other load to finish: {busy}", flush=True)
        seen.update(busy)
        if waited >= max_wait:
            print(f"  WARNING: still busy after {max_wait:.0f} s, measuring anyway: {busy}",
                  flush=True)
            return {"waited_s": round(waited, 1), "seen": sorted(seen), "gave_up": True}
        time.sleep(interval)


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


# --- database ------------------------------------------------------------------------

def fresh_database() -> contextlib.AbstractContextManager[str]:
    return fresh_pg_database(PG_ADMIN_URL, prefix="hf_tryon_bench")


def pg_url(sa_url: str) -> str:
    return sa_url.replace("postgresql+psycopg://", "postgresql://")


# --- processes -----------------------------------------------------------------------

def stack_env(db_url: str, s3: MotoS3, redis: RedisServer, fal: FalEmulatorProcess,
              api_port: int, prom_dir: Path) -> dict[str, str]:
    """What devstack/dev.py's stack_environment gives every process, on PostgreSQL and
    with the benchmark's own secret and lifted limits."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update({
        "HAIRFLUENCER_ENV": "development",
        "DATABASE_URL": db_url,
        "REDIS_URL": redis.url,
        "CELERY_BROKER_URL": redis.url,
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "S3_REGION": REGION,
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
        "FAL_QUEUE_HOST": f"127.0.0.1:{fal.port}",
        "FAL_KEY": "emulator-key",
        "FAL_WEBHOOK_JWKS_URL": fal.jwks_url,
        "FAL_MEDIA_HOSTS": f"127.0.0.1:{fal.port}",
        "SSL_CERT_FILE": str(fal.ca_bundle_path),
        "JWT_DEV_SECRET": DEV_SECRET,
        "JWT_AUDIENCE": "hairfluencer-api",
        "TRYON_DAILY_QUOTA": "1000000000",
        "PRESIGN_DAILY_QUOTA": "1000000000",
        "USER_RATE_LIMIT": "1000000000/second",
        "IP_RATE_LIMIT": "1000000000/second",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@dataclass(frozen=True)
class Config:
    """One API + worker shape, written `sync:2/prefork:4` or `gthread:2x4/threads:8`."""

    api_kind: str
    api_workers: int
    api_threads: int
    pool: str
    concurrency: int

    @classmethod
    def parse(cls, text: str) -> Config:
        api, _, wk = text.partition("/")
        kind, _, n = api.partition(":")
        threads = 1
        if "x" in n:
            n, t = n.split("x", 1)
            threads = int(t)
        pool, _, c = wk.partition(":")
        if kind not in ("sync", "gthread") or pool not in ("prefork", "threads", "solo"):
            raise argparse.ArgumentTypeError(f"bad config {text!r}")
        return cls(kind, int(n or 2), threads if kind == "gthread" else 1, pool, int(c or 2))

    @property
    def label(self) -> str:
        api = f"{self.api_kind}:{self.api_workers}" + (
            f"x{self.api_threads}" if self.api_kind == "gthread" else "")
        return f"{api}/{self.pool}:{self.concurrency}"


class Stack:
    """API, worker and beat around long-lived S3, Redis, emulator and database."""

    def __init__(self, env: dict[str, str], api_port: int, logs: Path, state: Path) -> None:
        self.env = env
        self.state = state
        self.api_port = api_port
        self.base = f"http://127.0.0.1:{api_port}"
        self.logs = logs
        self.api: ManagedProcess | None = None
        self.worker: ManagedProcess | None = None
        self.beat: ManagedProcess | None = None
        self.config: Config | None = None
        self._n = itertools.count()

    def start_beat(self) -> None:
        self.beat = ManagedProcess(
            [str(BIN / "celery"), "-A", "worker.app", "beat", "--loglevel", "INFO",
             "-s", str(self.state / "beat-schedule")],
            self.logs / "beat.log", env=self.env, cwd=REPO_ROOT, name="beat").start()

    def start(self, config: Config) -> None:
        """(Re)start API and worker in this shape; waits until both serve."""
        self.stop_app()
        n = next(self._n)
        self.config = config
        api_cmd = [str(BIN / "gunicorn"), "-c", "python:api.gunicorn_conf",
                   "-b", f"127.0.0.1:{self.api_port}", "-w", str(config.api_workers),
                   "-k", config.api_kind, "--backlog", "2048"]
        if config.api_kind == "gthread":
            api_cmd += ["--threads", str(config.api_threads)]
        self.api = ManagedProcess([*api_cmd, "api.wsgi:app"],
                                  self.logs / f"api-{n}-{_slug(config.label)}.log",
                                  env=self.env, cwd=REPO_ROOT, name="api").start()
        self.worker = ManagedProcess(
            [str(BIN / "celery"), "-A", "worker.app", "worker", "-Q", QUEUES,
             "-P", config.pool, "-c", str(config.concurrency), "--loglevel", "INFO",
             "-n", f"tryon-bench-{n}@%h"],
            self.logs / f"worker-{n}-{_slug(config.label)}.log",
            env=self.env, cwd=REPO_ROOT, name="worker").start()
        if not wait_until(lambda: _ready(self.base), 60, 0.3,
                          abort=lambda: not self.api.alive()):  # type: ignore[union-attr]
            raise RuntimeError(f"API did not become ready:\n{self.api.log_tail()}")
        if not wait_until(lambda: "ready." in self.worker.log_path.read_text(errors="replace"),
                          60, 0.3, abort=lambda: not self.worker.alive()):  # type: ignore[union-attr]
            raise RuntimeError(f"worker did not become ready:\n{self.worker.log_tail()}")

    def stop_app(self) -> None:
        for proc in (self.worker, self.api):
            if proc is not None:
                proc.stop(timeout=20)
        self.worker = self.api = None

    def stop(self) -> None:
        self.stop_app()
        if self.beat is not None:
            self.beat.stop()
            self.beat = None

    def purge_broker(self) -> None:
        """Drop queued messages (e.g. the previous run's 1,000 deadline tasks, due in
        2 minutes and no-ops for finished jobs), with no worker running."""
        subprocess.run([str(BIN / "celery"), "-A", "worker.app", "purge", "-f", "-Q", QUEUES],
                       env=self.env, cwd=REPO_ROOT, capture_output=True, timeout=60, check=False)

    def worker_pids(self) -> list[int]:
        return descendants(self.worker.pid) if self.worker and self.worker.pid else []

    def api_pids(self) -> list[int]:
        return descendants(self.api.pid) if self.api and self.api.pid else []


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def descendants(pid: int) -> list[int]:
    """pid and all its descendants (by /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}").exists() else []:
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def vm_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Every `interval` s: VmRSS of the worker's main process and its children."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pids, self.interval = pids, interval
        self.stop_event = threading.Event()
        self.peak_sum = self.peak_one = 0
        self.processes_max = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            rss = [vm_rss_kib(p) for p in self.pids()]
            if rss:
                self.peak_sum = max(self.peak_sum, sum(rss))
                self.peak_one = max(self.peak_one, max(rss))
                self.processes_max = max(self.processes_max, len(rss))
                self.samples += 1
            self.stop_event.wait(self.interval)

    def result(self) -> dict[str, Any]:
        return {"peak_sum_mib": round(self.peak_sum / 1024, 1),
                "peak_largest_process_mib": round(self.peak_one / 1024, 1),
                "processes": self.processes_max, "samples": self.samples}


# --- uploads (setup) ------------------------------------------------------------------

def selfie_bytes(side: int) -> bytes:
    """The test fixture scaled to side x side (a result from fal is ~1024 px): a
    realistic size for the worker's decode/re-encode of the result."""
    from PIL import Image

    with Image.open(SOURCE_IMAGE) as im:
        im = im.convert("RGB").resize((side, side), Image.LANCZOS)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=90)
    return out.getvalue()


def prepare_uploads(base: str, tokens: dict[str, str], data: bytes, db: str,
                    threads: int = 8, timeout: float = 180) -> dict[str, str]:
    """presign -> PUT -> confirm for every user, then wait until all are `ready`."""
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    uploads: dict[str, str] = {}
    errors: list[str] = []
    lock = threading.Lock()
    users = list(tokens)
    it = iter(users)

    def work() -> None:
        with httpx.Client(base_url=base, timeout=30) as api, httpx.Client(timeout=30) as s3:
            while True:
                with lock:
                    user = next(it, None)
                if user is None:
                    return
                h = {"Authorization": f"Bearer {tokens[user]}"}
                try:
                    r = api.post("/v1/uploads/presign", headers=h, json={
                        "contentType": "image/jpeg", "contentLength": len(data), "checksum": checksum})
                    r.raise_for_status()
                    issued = r.json()
                    put = s3.put(issued["uploadUrl"], content=data, headers=issued["headers"])
                    put.raise_for_status()
                    c = api.post("/v1/uploads/confirm", headers=h, json={"key": issued["key"]})
                    c.raise_for_status()
                    with lock:
                        uploads[user] = issued["uploadId"]
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{user}: {exc}")

    pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout)
    if errors:
        raise RuntimeError(f"upload preparation failed: {errors[:5]}")
    deadline = time.monotonic() + timeout
    with psycopg.connect(pg_url(db), autocommit=True) as conn:
        while time.monotonic() < deadline:
            rows = dict(conn.execute("SELECT status, count(*) FROM uploads GROUP BY status").fetchall())
            if rows.get("ready", 0) >= len(users):
                return uploads
            if rows.get("rejected"):
                raise RuntimeError(f"uploads rejected: {rows}")
            time.sleep(0.5)
    raise RuntimeError(f"uploads not ready in {timeout:.0f} s: {rows}")


# --- clients ---------------------------------------------------------------------------

@dataclass
class Post:
    index: int
    user: str
    t_send: float = 0.0  # wall clock
    latency: float = 0.0
    status: int | str = 0
    job_id: str | None = None


def post_tryon(api: httpx.Client, token: str, upload_id: str, style: str, key: str,
               rec: Post) -> None:
    rec.t_send = time.time()
    t0 = time.perf_counter()
    try:
        r = api.post("/v1/try-ons", headers={"Authorization": f"Bearer {token}",
                                             "Idempotency-Key": key},
                     json={"uploadId": upload_id, "hairstyleId": style})
        rec.status = r.status_code
        if r.status_code == 202:
            rec.job_id = r.json()["jobId"]
    except httpx.HTTPError as exc:
        rec.status = type(exc).__name__
    rec.latency = time.perf_counter() - t0


def fire_all(base: str, plan: list[tuple[str, str, str]], tokens: dict[str, str], threads: int,
             tag: str, timeout: float) -> list[Post]:
    """POST every planned job from `threads` client threads, as fast as they go."""
    recs = [Post(i, user) for i, (user, _, _) in enumerate(plan)]
    counter = itertools.count()
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=base, timeout=60, limits=limits) as api:
            start.wait()
            while True:
                with lock:
                    i = next(counter)
                if i >= len(plan):
                    return
                user, upload_id, style = plan[i]
                post_tryon(api, tokens[user], upload_id, style, f"{tag}-{i}", recs[i])

    pool = [threading.Thread(target=work, daemon=True, name=f"client-{n}") for n in range(threads)]
    for t in pool:
        t.start()
    deadline = time.monotonic() + timeout
    for t in pool:
        t.join(max(0.1, deadline - time.monotonic()))
    return recs


class Progress(threading.Thread):
    """Polls try_ons (by created_at >= start) every `interval` s: a timeline."""

    def __init__(self, db: str, since: datetime, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="progress")
        self.db, self.since, self.interval = db, since, interval
        self.stop_event = threading.Event()
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self.latest: dict[str, int] = {}

    def run(self) -> None:
        with psycopg.connect(pg_url(self.db), autocommit=True) as conn:
            while not self.stop_event.is_set():
                rows = dict(conn.execute(
                    "SELECT status, count(*) FROM try_ons WHERE created_at >= %s GROUP BY status",
                    (self.since,)).fetchall())
                self.latest = rows
                self.timeline.append((time.time(), rows))
                self.stop_event.wait(self.interval)


# --- what the stack recorded ------------------------------------------------------------

def job_rows(db: str, since: datetime) -> list[dict[str, Any]]:
    with psycopg.connect(pg_url(db), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT t.id, t.status, t.error_code, t.attempt, t.created_at, t.completed_at, "
            "t.fal_request_id, t.first_submitted_at, "
            "(SELECT min(a.at) FROM audit_events a WHERE a.subject_type = 'try_on' "
            " AND a.subject_id = t.id AND a.action = 'tryon.invoked') AS invoked_at "
            "FROM try_ons t WHERE t.created_at >= %s", (since,))
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def stage_profile(rows: list[dict[str, Any]], emu: dict[str, Any], latency: float,
                  spans: dict[str, dict[str, tuple[float, float]]]) -> dict[str, Any]:
    """Per-job stage durations (seconds lists summarised in ms)."""
    reqs = emu.get("requests", {})
    run_spans, complete_spans = spans.get("tryons.run", {}), spans.get("tryons.complete", {})
    st: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["status"] != "succeeded" or r["completed_at"] is None:
            continue
        created, done = r["created_at"].timestamp(), r["completed_at"].timestamp()
        st["total (created -> succeeded)"].append(done - created)
        st["overhead (total - emulator latency)"].append(done - created - latency)
        inv = r["invoked_at"].timestamp() if r["invoked_at"] else None
        if inv is None:
            continue
        st["1 created -> invoked (wait for tryons.run)"].append(inv - created)
        st["invoked -> succeeded - latency"].append(done - inv - latency)
        if r["id"] in run_spans:
            start, end = run_spans[r["id"]]
            st["  tryons.run task run time"].append(end - start)
        e = reqs.get(r["fal_request_id"] or "")
        if not e:
            continue
        sub, started, fin = e["submitted_at"], e["started_at"], e["completed_at"]
        st["2 invoked -> fal accepted (claim, sign, submit)"].append(sub - inv)
        if not (started and fin):
            continue
        st["3 fal accepted -> fal done (emulator)"].append(fin - sub)
        ok = [d for d in e.get("webhook_deliveries", []) if d.get("status_code") == 200]
        if not ok:
            continue
        first = min(d["at"] for d in ok)
        st["4 fal done -> webhook sent (emulator pool)"].append(first - fin)
        st["5 webhook sent -> succeeded"].append(done - first)
        if r["id"] in complete_spans:
            start, end = complete_spans[r["id"]]
            st["5a webhook sent -> tryons.complete starts (API, broker, queue)"].append(start - first)
            st["5b tryons.complete run time"].append(end - start)
    return {k: summary_ms(v) for k, v in sorted(st.items(), key=lambda kv: kv[0].strip())}


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


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Per task: count, mean and histogram-bucket p50/p99 upper bounds, run-only deltas."""
    per: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(dict))
    for key, value in after.items():
        d = value - before.get(key, 0.0)
        m = re.match(r"(\w+?)_(sum|count|bucket)\{(.*)\}", key)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[3]))
        metric, kind, task = m[1], m[2], labels.get("task", "?")
        if kind == "bucket":
            per[(task)][metric].setdefault("buckets", []).append((float(labels["le"]), d))
        else:
            per[task][metric][kind] = d
    out: dict[str, Any] = {}
    for task, metrics in sorted(per.items()):
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


_SUCCEEDED = re.compile(r"Task (\S+)\[[0-9a-f-]+\] succeeded in ([0-9.]+)s")
_SUBMITTED = re.compile(r"job \S+ submitted to fal \(attempt \d+, (\d+) ms\)")


def worker_log_tasks(log_path: Path, offset: int) -> dict[str, Any]:
    """Celery's own 'succeeded in' run times and the pipeline's submit times."""
    runs: dict[str, list[float]] = defaultdict(list)
    submit: list[float] = []
    other: Counter[str] = Counter()
    with log_path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            line = raw.decode(errors="replace")
            m = _SUCCEEDED.search(line)
            if m:
                runs[m[1]].append(float(m[2]))
                continue
            m = _SUBMITTED.search(line)
            if m:
                submit.append(float(m[1]) / 1000)
                continue
            for word in ("WARNING", "ERROR", "Traceback", "retry", "Retry"):
                if word in line:
                    other[word] += 1
    out: dict[str, Any] = {k: summary_ms(v) | {"total_s": round(sum(v), 2)} for k, v in sorted(runs.items())}
    out["fal_submit_call"] = summary_ms(submit)
    out["log_problem_lines"] = dict(other)
    return out


def task_spans(log_path: Path, offset: int) -> dict[str, dict[str, tuple[float, float]]]:
    """task name -> job id -> (start, end) wall clock, from Celery's 'succeeded in' lines
    (logged time - runtime = start; the first argument of every tryons.* task is the job)."""
    spans: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    with log_path.open("rb") as f:
        f.seek(offset)
        for raw in f:
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


_ACCESS = re.compile(r'"(POST|GET|PUT|DELETE) (\S+)" (\d{3}) \S+ (\d+)ms')


def api_log_latency(log_path: Path, offset: int) -> dict[str, Any]:
    """Server-side request times from gunicorn's access log (%(M)s, ms)."""
    per: dict[str, list[float]] = defaultdict(list)
    codes: Counter[str] = Counter()
    with log_path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            m = _ACCESS.search(raw.decode(errors="replace"))
            if m:
                path = "/v1/try-ons" if m[2] == "/v1/try-ons" else m[2]
                per[f"{m[1]} {path}"].append(float(m[4]) / 1000)
                codes[f"{m[1]} {path} {m[3]}"] += 1
    return {"server_ms": {k: summary_ms(v) for k, v in per.items() if len(v) >= 5},
            "codes": dict(codes)}


def file_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


# --- CPU accounting ------------------------------------------------------------------------

def cpu_groups(stack: Stack, others: dict[str, list[int]]) -> dict[str, list[int]]:
    groups = {"api (gunicorn)": stack.api_pids(), "worker (celery)": stack.worker_pids(),
              "beat": [stack.beat.pid] if stack.beat and stack.beat.pid else []}
    groups.update(others)
    groups["postgres"] = pids_by_comm("postgres")
    groups["bench client"] = [os.getpid()]
    return groups


def cpu_seconds(before: dict[str, dict[int, tuple[int, int]]],
                groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU used since `before` by each group. PostgreSQL backends that appeared during
    the run (new pool connections) count from zero; other groups' PIDs are fixed."""
    out = {}
    for name in groups:
        if name == "postgres":
            after = cpu_snapshot(pids_by_comm("postgres"))
            base = {pid: before[name].get(pid, (0, 0)) for pid in after}
            u, s = cpu_delta(base, after)
        else:
            u, s = cpu_delta(before[name], cpu_snapshot(list(before[name])))
        out[name] = round((u + s) / CLK_TCK, 2)
    return out


# --- the runs -------------------------------------------------------------------------------

def run_burst(stack: Stack, fal: FalEmulatorProcess, db: str, plan: list[tuple[str, str, str]],
              tokens: dict[str, str], args: argparse.Namespace, others: dict[str, list[int]],
              tag: str) -> dict[str, Any]:
    """Run 1: every job POSTed as fast as the client pool goes; wait for all of them."""
    fal.configure(latency_seconds=args.latency)
    fal.reset()
    since = datetime.now(UTC)
    time.sleep(0.05)
    metrics0 = scrape_metrics(stack.base)
    wlog, alog = stack.worker.log_path, stack.api.log_path  # type: ignore[union-attr]
    woff, aoff = file_size(wlog), file_size(alog)
    groups = cpu_groups(stack, others)
    cpu0 = {k: cpu_snapshot(v) for k, v in groups.items()}
    busy0, t_mono0 = system_busy_seconds(), time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    rss = RssSampler(stack.worker_pids)
    rss.start()
    progress = Progress(db, since)
    progress.start()

    recs = fire_all(stack.base, plan, tokens, args.client_threads, tag, timeout=args.run_timeout / 2)
    accepted = [r for r in recs if r.status == 202]
    first_post = min(r.t_send for r in recs if r.t_send)
    last_response = max(r.t_send + r.latency for r in recs if r.t_send)
    print(f"  {len(accepted)}/{len(recs)} accepted in {last_response - first_post:.1f} s; "
          "waiting for completion", flush=True)
    deadline = time.monotonic() + args.run_timeout
    finished_seen = None
    last_print = 0.0
    while time.monotonic() < deadline:
        c = progress.latest
        done = c.get("succeeded", 0) + c.get("failed", 0)
        if done >= len(accepted) and progress.timeline and progress.timeline[-1][0] > last_response:
            finished_seen = time.time()
            break
        if time.monotonic() - last_print > 10:
            last_print = time.monotonic()
            print(f"    t+{time.time() - first_post:5.0f}s {dict(sorted(c.items()))}", flush=True)
        time.sleep(0.25)
    progress.stop_event.set()
    rss.stop_event.set()
    progress.join(5)
    rss.join(5)
    wall = time.monotonic() - t_mono0
    cpu = cpu_seconds(cpu0, groups)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu["bench client"] = round((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), 2)
    busy = system_busy_seconds() - busy0
    time.sleep(1.0)  # let the last log lines land
    metrics1 = scrape_metrics(stack.base)
    emu = fal.stats(include_requests=True)
    rows = job_rows(db, since)

    statuses = Counter(r["status"] for r in rows)
    done_rows = [r for r in rows if r["status"] == "succeeded" and r["completed_at"]]
    last_done = max((r["completed_at"].timestamp() for r in done_rows), default=None)
    invoked = [r["invoked_at"].timestamp() for r in rows if r["invoked_at"]]
    lat = [r.latency for r in accepted]
    n_jobs = max(1, len(accepted))
    res: dict[str, Any] = {
        "config": stack.config.label,  # type: ignore[union-attr]
        "jobs_planned": len(plan),
        "accepted_202": len(accepted),
        "post_errors": dict(Counter(str(r.status) for r in recs if r.status != 202)),
        "statuses": dict(statuses),
        "failed": statuses.get("failed", 0),
        "error_codes": dict(Counter(r["error_code"] for r in rows if r["error_code"])),
        "all_done": finished_seen is not None,
        "makespan_s": round(last_done - first_post, 2) if last_done and finished_seen else None,
        "makespan_to_last_succeeded_s": round(last_done - first_post, 2) if last_done else None,
        "posting_s": round(last_response - first_post, 2),
        "post_rate_per_s": round(len(recs) / max(1e-9, last_response - first_post), 1),
        "all_invoked_after_s": round(max(invoked) - first_post, 2) if invoked else None,
        "post_latency_ms": summary_ms(lat),
        "worker_rss": rss.result(),
        "cpu_seconds": cpu,
        "cpu_ms_per_job": {k: round(v / n_jobs * 1000, 1) for k, v in cpu.items()},
        "machine_busy_cpu_s": round(busy, 1),
        "machine_busy_fraction": round(busy / (wall * (os.cpu_count() or 1)), 3),
        "wall_s": round(wall, 1),
        "stages": stage_profile(rows, emu, args.latency, task_spans(wlog, woff)),
        "tasks_metrics": metric_deltas(metrics0, metrics1),
        "tasks_log": worker_log_tasks(wlog, woff),
        "api_log": api_log_latency(alog, aoff),
        "emulator": {k: emu.get(k) for k in ("submits", "enqueued", "status_calls", "result_calls",
                                             "webhooks_sent", "webhook_attempts", "webhooks_failed",
                                             "media_downloads", "completed", "in_progress",
                                             "in_queue")},
        "timeline": [(round(t - first_post, 1), c) for t, c in progress.timeline[:: max(
            1, len(progress.timeline) // 60)]],
        "loadavg_after": loadavg(),
    }
    return res


def run_overhead(stack: Stack, fal: FalEmulatorProcess, db: str, plan: list[tuple[str, str, str]],
                 tokens: dict[str, str], args: argparse.Namespace, tag: str,
                 concurrency: int) -> dict[str, Any]:
    """Run 2: emulator latency 0, a few jobs in flight, each waited for in the table."""
    fal.configure(latency_seconds=0)
    fal.reset()
    since = datetime.now(UTC)
    time.sleep(0.05)
    metrics0 = scrape_metrics(stack.base)
    wlog, alog = stack.worker.log_path, stack.api.log_path  # type: ignore[union-attr]
    woff, aoff = file_size(wlog), file_size(alog)
    rss = RssSampler(stack.worker_pids)
    rss.start()
    recs = [Post(i, user) for i, (user, _, _) in enumerate(plan)]
    counter = itertools.count()
    lock = threading.Lock()
    timeouts: list[str] = []
    deadline = time.monotonic() + args.run_timeout

    def work() -> None:
        with httpx.Client(base_url=stack.base, timeout=30) as api, \
                psycopg.connect(pg_url(db), autocommit=True) as conn:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter)
                if i >= len(plan):
                    return
                user, upload_id, style = plan[i]
                post_tryon(api, tokens[user], upload_id, style, f"{tag}-{i}", recs[i])
                if recs[i].job_id is None:
                    continue
                limit = time.monotonic() + 60
                while time.monotonic() < limit:
                    row = conn.execute("SELECT status FROM try_ons WHERE id = %s",
                                       (recs[i].job_id,)).fetchone()
                    if row and row[0] in ("succeeded", "failed"):
                        break
                    time.sleep(0.02)
                else:
                    timeouts.append(recs[i].job_id)

    pool = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    t0 = time.monotonic()
    for t in pool:
        t.start()
    for t in pool:
        t.join(max(0.1, deadline - time.monotonic()))
    wall = time.monotonic() - t0
    rss.stop_event.set()
    rss.join(5)
    time.sleep(1.0)
    metrics1 = scrape_metrics(stack.base)
    emu = fal.stats(include_requests=True)
    rows = job_rows(db, since)
    statuses = Counter(r["status"] for r in rows)
    overhead = [r["completed_at"].timestamp() - r["created_at"].timestamp()
                for r in rows if r["status"] == "succeeded" and r["completed_at"]]
    accepted = [r for r in recs if r.status == 202]
    return {
        "config": stack.config.label,  # type: ignore[union-attr]
        "jobs": len(plan), "concurrency": concurrency,
        "accepted_202": len(accepted), "statuses": dict(statuses),
        "failed": statuses.get("failed", 0), "not_finished_in_60s": len(timeouts),
        "wall_s": round(wall, 1),
        "overhead_ms": summary_ms(overhead),
        "post_latency_ms": summary_ms([r.latency for r in accepted]),
        "stages": stage_profile(rows, emu, 0.0, task_spans(wlog, woff)),
        "tasks_metrics": metric_deltas(metrics0, metrics1),
        "tasks_log": worker_log_tasks(wlog, woff),
        "api_log": api_log_latency(alog, aoff),
        "worker_rss": rss.result(),
    }


# --- micro-measurements (not in the timed runs) ----------------------------------------------

def micro_costs(env: dict[str, str], selfie: bytes) -> dict[str, Any]:
    """CPU costs of single steps of tryons.complete, measured in this process with the
    stack's settings (SSL_CERT_FILE = the emulator's CA bundle, as the worker has it)."""
    from PIL import Image

    from shared.images.sanitize import sanitize

    out: dict[str, Any] = {}
    saved = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = env["SSL_CERT_FILE"]
    try:
        def timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
            fn()
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            return {"cpu_ms": round((time.process_time() - c0) / n * 1000, 2),
                    "wall_ms": round((time.perf_counter() - w0) / n * 1000, 2)}

        out["httpx.Client() with SSL_CERT_FILE bundle (per result download in _download)"] = \
            timed(lambda: httpx.Client().close(), 20)
        with Image.open(io.BytesIO(selfie)) as probe:
            size = probe.size

        def store_result() -> None:
            with Image.open(io.BytesIO(selfie), formats=["JPEG"]) as image:
                image.load()
                sanitize(image)
                thumb = image.convert("RGB")
                thumb.thumbnail((256, 256))
                sanitize(thumb)

        out[f"decode + sanitize + thumbnail of a {size[0]}x{size[1]} result (_store_result)"] = \
            timed(store_result, 10)
    finally:
        if saved is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = saved
    return out


class _Clock:
    """Calls, wall and CPU time per call path, collected by wrapping real functions
    (single-threaded use)."""

    def __init__(self) -> None:
        self.rec: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        self.path: list[str] = []

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            self.path.append(label)
            key = tuple(self.path)
            w, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                r = self.rec[key]
                r[0] += 1
                r[1] += time.perf_counter() - w
                r[2] += time.thread_time() - c
                self.path.pop()
        return timed

    def table(self, n: int) -> dict[str, dict[str, float]]:
        """Per job; every path with children also gets a '(rest ...)' row: its own
        time outside the wrapped parts (DB round trips, ORM, Python)."""
        out: dict[str, dict[str, float]] = {}
        keys = sorted(self.rec)
        for key in keys:
            calls, wall, cpu = self.rec[key]
            out[" > ".join(key)] = {"calls_per_job": round(calls / n, 2),
                                    "wall_ms_per_job": round(wall / n * 1000, 2),
                                    "cpu_ms_per_job": round(cpu / n * 1000, 2)}
            kids = [k for k in keys if len(k) == len(key) + 1 and k[:-1] == key]
            if kids:
                out[" > ".join((*key, "(rest: DB round trips, ORM, Python)"))] = {
                    "calls_per_job": 1.0,
                    "wall_ms_per_job": round((wall - sum(self.rec[k][1] for k in kids)) / n * 1000, 2),
                    "cpu_ms_per_job": round((cpu - sum(self.rec[k][2] for k in kids)) / n * 1000, 2)}
        return out


def component_profile(env: dict[str, str], plan: list[tuple[str, str, str]], n: int) -> dict[str, Any]:
    """tryons.run and tryons.complete called in this process, one job at a time, against
    the same PostgreSQL, moto and emulator (latency 0), with their parts wrapped and timed.

    No Celery, no contention: the intrinsic cost of each step. Polling mode
    (PUBLIC_BASE_URL empty) so the emulator sends no webhook and the running worker
    does not touch these jobs; jobs are created with tryons.start and no dispatch."""
    import shared.tryons.pipeline as tp
    from shared.core.config import load_settings
    from shared.services import Services
    from shared.tryons import use_cases as tryons

    env2 = dict(env, PUBLIC_BASE_URL="")
    saved = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = env["SSL_CERT_FILE"]  # as the worker has it (httpx reads it)
    clock = _Clock()
    originals = {name: getattr(tp, name) for name in
                 ("_load", "_download", "_store_result", "_succeed", "sanitize", "run", "complete")}
    client_init = httpx.Client.__init__
    try:
        svc = Services.from_settings(load_settings(env2))
        svc.dispatch = lambda *a, **k: True  # nothing reaches the broker
        storage, fal = svc.storage, svc.fal
        for name in ("presign_get", "put_bytes"):
            setattr(storage, name, clock.wrap(f"S3 {name}", getattr(storage, name)))
        fal.submit = clock.wrap("fal submit (HTTPS to emulator)", fal.submit)  # type: ignore[method-assign]
        for name, label in (("_load", "_load (SELECT job)"), ("_download", "_download (result GET)"),
                            ("_store_result", "_store_result (decode, sanitize x2, 2 PUTs)"),
                            ("_succeed", "_succeed (UPDATE + audit, SELECT)"),
                            ("sanitize", "  sanitize (re-encode)")):
            setattr(tp, name, clock.wrap(label, originals[name]))
        httpx.Client.__init__ = clock.wrap("  httpx.Client() built (in _download)", client_init)  # type: ignore[method-assign]
        run = clock.wrap("tryons.run body", originals["run"])
        complete = clock.wrap("tryons.complete body", originals["complete"])
        jobs = []
        for user, upload_id, style in plan[: n + 1]:
            jobs.append(tryons.start(svc, user, upload_id=upload_id, key=None, hairstyle_id=style,
                                     prompt=None, locale="en"))
        outcomes: Counter[str] = Counter()
        for i, job in enumerate(jobs):
            if i == 1:  # the first job warms connections and caches: not counted
                clock.rec.clear()
            run(svc, job.id)
            fresh = originals["_load"](svc, job.id)
            if fresh.fal_request_id is None:
                outcomes["not submitted"] += 1
                continue
            wait_until(lambda: fal.status(fresh.fal_request_id).completed, 20, 0.02)  # noqa: B023
            result = fal.result(fresh.fal_request_id)
            completion = tp.Completion(True, fresh.fal_request_id,
                                       output={"images": [{"url": u} for u in result.image_urls]})
            complete(svc, job.id, fresh.attempt, completion)
            outcomes[originals["_load"](svc, job.id).status] += 1
        svc.engine.dispose()
        table = clock.table(max(1, len(jobs) - 1))
        return {"jobs": len(jobs) - 1, "outcomes": dict(outcomes), "per_job": table}
    finally:
        httpx.Client.__init__ = client_init  # type: ignore[method-assign]
        for name, fn in originals.items():
            setattr(tp, name, fn)
        if saved is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = saved


# --- report -----------------------------------------------------------------------------------

def print_burst(res: dict[str, Any]) -> None:
    print(f"\n== Run 1 [{res['config']}]: {res['accepted_202']} try-ons, "
          f"latency {res.get('latency_s', '?')} s ==")
    print(f"  first POST -> last succeeded: {res['makespan_to_last_succeeded_s']} s "
          f"(all done: {res['all_done']}); posting took {res['posting_s']} s "
          f"({res['post_rate_per_s']}/s); all invoked after {res['all_invoked_after_s']} s")
    pl = res["post_latency_ms"]
    print(f"  POST latency p50 {pl.get('p50')} ms, p99 {pl.get('p99')} ms, max {pl.get('max')} ms;"
          f" failed {res['failed']}; statuses {res['statuses']}; POST errors {res['post_errors']}")
    w = res["worker_rss"]
    print(f"  worker RSS peak: sum {w['peak_sum_mib']} MiB, largest process "
          f"{w['peak_largest_process_mib']} MiB ({w['processes']} processes)")
    print(f"  CPU s: {res['cpu_seconds']} (machine busy {res['machine_busy_cpu_s']} s, "
          f"{res['machine_busy_fraction'] * 100:.0f} % of {os.cpu_count()} cores over {res['wall_s']} s)")
    print_stages(res["stages"])
    print_tasks(res)


def print_stages(stages: dict[str, Any]) -> None:
    rows = [[k, v.get("n"), v.get("p50"), v.get("p90"), v.get("p99"), v.get("max")]
            for k, v in stages.items()]
    print_table(rows, ["stage", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"])


def print_tasks(res: dict[str, Any]) -> None:
    rows = []
    for task, m in res["tasks_metrics"].items():
        log = res["tasks_log"].get(task, {})
        rows.append([task, m.get("run_n"), m.get("run_mean_ms"), log.get("p50"), log.get("p99"),
                     log.get("total_s"), m.get("queue_n", 0)])
    if rows:
        print_table(rows, ["task", "n", "run mean ms", "run p50", "run p99", "run total s",
                           "queue-latency observations"])
    sub = res["tasks_log"].get("fal_submit_call", {})
    print(f"  fal submit call (worker log): p50 {sub.get('p50')} ms, p99 {sub.get('p99')} ms")
    print(f"  API server-side: {json.dumps(res['api_log']['server_ms'])}")
    print(f"  worker log problem lines: {res['tasks_log'].get('log_problem_lines')}")


def run_all(args: argparse.Namespace, configs: list[Config], run2_config: Config,
            result: dict[str, Any], es: contextlib.ExitStack, tmp: Path, logs: Path) -> None:
    if not args.no_wait:  # setup (uploads, validation) is load too
        wait_for_others()
    arm(300)  # setup
    t_setup = time.monotonic()
    db = es.enter_context(fresh_database())
    redis = start_redis(tmp / "redis")
    es.callback(redis.stop)
    s3 = MotoS3().start(data_dir=tmp / "moto")
    es.callback(s3.stop)
    fal = start_emulator_process(tmp / "fal", latency=args.latency,
                                 workers=args.emulator_workers)
    es.callback(fal.stop)
    prom = tmp / "prometheus"
    prom.mkdir()
    api_port = free_port()
    env = stack_env(db, s3, redis, fal, api_port, prom)
    r = subprocess.run([str(BIN / "hairfluencer"), "setup-storage"], env=env, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"setup-storage failed: {r.stdout}{r.stderr}")
    result["settings"]["endpoints"] = {"s3": s3.endpoint_url, "redis": redis.url,
                                       "fal": fal.base_url, "api": f"http://127.0.0.1:{api_port}"}
    print(f"S3 (moto) {s3.endpoint_url}, Redis {redis.url}, fal emulator {fal.base_url}, "
          f"API :{api_port}", flush=True)
    stack = Stack(env, api_port, logs, tmp)
    es.callback(stack.stop)
    stack.start_beat()
    stack.start(configs[0])
    from shared.access.auth import issue_dev_token
    from shared.core.config import load_settings

    settings = load_settings(env)
    users = [f"bench-user-{i:03d}" for i in range(args.users)]
    tokens = {u: issue_dev_token(settings, u, 6 * 3600) for u in users}
    selfie = selfie_bytes(args.selfie_side)
    uploads = prepare_uploads(stack.base, tokens, selfie, db)
    result["settings"]["selfie_bytes"] = len(selfie)
    print(f"setup done in {time.monotonic() - t_setup:.0f} s: {len(uploads)} uploads ready",
          flush=True)
    others = {"fal emulator": [fal.process.pid], "moto S3": [s3.process.pid],  # type: ignore[list-item]
              "redis": [redis.process.pid]}  # type: ignore[list-item]
    plan = [(users[i % len(users)], uploads[users[i % len(users)]], STYLES[i % len(STYLES)])
            for i in range(args.jobs)]
    run_tag = uuid.uuid4().hex[:8]
    for n, config in enumerate(configs if args.jobs > 0 else []):
        if n or stack.config != config:
            arm(180)
            stack.stop_app()
            stack.purge_broker()
            stack.start(config)
        signal.alarm(0)
        if not args.no_wait:
            wait_for_others()
        time.sleep(3)  # let the fresh worker settle
        arm(args.run_timeout + 240)
        print(f"\nRun 1 [{config.label}] {args.jobs} try-ons, latency {args.latency} s, "
              f"load {loadavg()}", flush=True)
        res = run_burst(stack, fal, db, plan, tokens, args, others, f"{run_tag}-r1-{n}")
        res["latency_s"] = args.latency
        result["runs"].append(res)
        print_burst(res)
    if not args.skip_run2:
        result["run2"] = []
        for conc in [int(c) for c in str(args.run2_concurrency).split(",") if c.strip()]:
            arm(180)
            # Always a fresh worker and an empty broker: Run 1 left ~1,000 deadline tasks
            # (ETA 2 min after submit, no-ops for finished jobs) that would fire mid-run.
            stack.stop_app()
            stack.purge_broker()
            stack.start(run2_config)
            time.sleep(3)
            signal.alarm(0)
            if not args.no_wait:
                wait_for_others()
            arm(args.run_timeout + 240)
            plan2 = [(users[i % len(users)], uploads[users[i % len(users)]],
                      STYLES[i % len(STYLES)]) for i in range(args.run2_jobs)]
            print(f"\nRun 2 [{run2_config.label}] {args.run2_jobs} try-ons, latency 0, "
                  f"{conc} in flight", flush=True)
            r2 = run_overhead(stack, fal, db, plan2, tokens, args, f"{run_tag}-r2-{conc}", conc)
            result["run2"].append(r2)
            o = r2["overhead_ms"]
            print(f"  overhead (completed_at - created_at): p50 {o.get('p50')} ms, "
                  f"p90 {o.get('p90')} ms, p99 {o.get('p99')} ms (n={o.get('n')}); "
                  f"failed {r2['failed']}; POST p50 {r2['post_latency_ms'].get('p50')} ms, "
                  f"wall {r2['wall_s']} s")
            print_stages(r2["stages"])
            print_tasks(r2)
    arm(300)
    fal.configure(latency_seconds=0)
    profile_plan = [(users[i % len(users)], uploads[users[i % len(users)]], STYLES[i % len(STYLES)])
                    for i in range(args.profile_jobs + 1)]
    print(f"\nin-process profile of tryons.run + tryons.complete ({args.profile_jobs} jobs, "
          "one at a time, latency 0)", flush=True)
    prof = component_profile(env, profile_plan, args.profile_jobs)
    result["component_profile"] = prof
    print(f"  outcomes {prof['outcomes']}")
    print_table([["- " * k.count(" > ") + k.split(" > ")[-1], v["calls_per_job"],
                  v["wall_ms_per_job"], v["cpu_ms_per_job"]] for k, v in prof["per_job"].items()],
                ["part (per job)", "calls", "wall ms", "cpu ms"])
    result["micro"] = micro_costs(env, selfie)
    print("\nmicro-measurements (this process, not timed runs):")
    for k, v in result["micro"].items():
        print(f"  {k}: {v}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1000, help="Run 1 try-ons per config (0: no Run 1)")
    p.add_argument("--latency", type=float, default=10.0, help="emulator latency in Run 1 (s)")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--client-threads", type=int, default=32)
    p.add_argument("--configs", default="sync:2/prefork:2",
                   help="comma-separated API/worker shapes for Run 1, e.g. "
                        "sync:2/prefork:2,sync:2/prefork:4,gthread:2x4/threads:8")
    p.add_argument("--run2-config", default=None, help="shape for Run 2 (default: first of --configs)")
    p.add_argument("--run2-jobs", type=int, default=200)
    p.add_argument("--run2-concurrency", default="4,1",
                   help="comma-separated: one Run 2 per value (jobs in flight)")
    p.add_argument("--skip-run2", action="store_true")
    p.add_argument("--emulator-workers", type=int, default=16)
    p.add_argument("--selfie-side", type=int, default=1024,
                   help="uploaded selfie (and so the emulator's result) is side x side px")
    p.add_argument("--profile-jobs", type=int, default=40,
                   help="jobs for the in-process component profile")
    p.add_argument("--run-timeout", type=float, default=600.0, help="hard limit per run (s)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for other benchmarks/tests")
    args = p.parse_args()
    configs = [Config.parse(c.strip()) for c in args.configs.split(",") if c.strip()]
    run2_config = Config.parse(args.run2_config) if args.run2_config else configs[0]

    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGTERM, _terminate)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = RESULTS_DIR / f"tryon-logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hf-tryon-bench-"))
    from importlib import metadata

    result: dict[str, Any] = {
        "benchmark": "tryon", "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git": git_revision(), "machine": machine_info(),
        "versions": {n: metadata.version(n) for n in ("celery", "kombu", "moto", "gunicorn",
                                                       "fal-client", "httpx", "psycopg", "pillow")},
        "settings": {"jobs": args.jobs, "latency_s": args.latency, "users": args.users,
                     "client_threads": args.client_threads, "configs": [c.label for c in configs],
                     "run2": {"config": run2_config.label, "jobs": args.run2_jobs,
                              "concurrency": args.run2_concurrency},
                     "emulator_workers": args.emulator_workers, "selfie_side": args.selfie_side,
                     "s3": "moto server (devstack.localstack.MotoS3)", "db": "PostgreSQL (fresh database)",
                     "idempotency_key": True, "beat": True, "logs": str(logs)},
        "runs": [], "run2": None,
    }
    print(f"machine: {result['machine']['nproc']} x {result['machine']['cpu_model']}, "
          f"{result['machine']['mem_total_gib']} GiB, kernel {result['machine']['kernel']}", flush=True)
    exit_code = 0
    try:
        with contextlib.ExitStack() as es:
            try:
                run_all(args, configs, run2_config, result, es, tmp, logs)
            finally:
                signal.alarm(0)  # cleanup (ExitStack) is never cut short by the alarm
    except (HardTimeout, KeyboardInterrupt) as exc:
        print(f"ABORTED: {exc!r}", file=sys.stderr)
        result["aborted"] = repr(exc)
        exit_code = 2
    except Exception as exc:  # noqa: BLE001 - recorded in the result file, then re-reported
        import traceback

        traceback.print_exc()
        result["error"] = repr(exc)
        exit_code = 1
    finally:
        signal.alarm(0)
        shutil.rmtree(tmp, ignore_errors=True)
        path = write_result("tryon", result)
        print(f"\nwrote {path}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
