"""What the presign benchmark runs against: the app's environment (fresh PostgreSQL
database, the shared Redis, an unused S3 port: signing never contacts S3), and the
servers under load, each `gunicorn -w 2` with the same settings."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import redis

from bench.common.database import pg_url
from bench.common.launch import app_env, start_ready
from bench.common.paths import BENCH_DIR, RESULTS_DIR, VENV_BIN
from bench.common.procfs import descendants
from bench.presign.request import PATH
from devstack.procs import ManagedProcess, ServerHandle, free_port

REDIS_URL = os.environ.get("HF_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DEV_SECRET = "bench-only-hs256-secret-not-used-anywhere-else-0123456789"  # noqa: S105
# What each server runs; bare and lean are bench/*.py, the full stack is the API.
APPS = {"bare": "bare_app:app", "full": "api.wsgi:app", "lean": "lean_app:app"}
LOG_PROBLEMS = ("Traceback", '"level": "ERROR"', "[ERROR]", "CRITICAL")


def bench_env(db_url: str) -> dict[str, str]:
    return app_env(database_url=db_url, redis_url=REDIS_URL,
                   s3_endpoint_url=f"http://127.0.0.1:{free_port()}",  # never contacted by signing
                   jwt_dev_secret=DEV_SECRET, rate_limit="1000000/second")


def row_counts(sa_url: str) -> tuple[int, int]:
    with psycopg.connect(pg_url(sa_url)) as conn:
        up = conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
        au = conn.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    return int(up), int(au)


def cleanup_redis(run_id: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"hf:limits:*{run_id}*", count=1000))
    keys += list(client.scan_iter(match=f"hf:lean:*{run_id}*", count=1000))
    keys += list(client.scan_iter(match="hf:lean:ip:*", count=1000))  # only the prototype uses it
    if keys:
        client.delete(*keys)
    client.close()
    return len(keys)


class GunicornServer(ServerHandle):
    """`gunicorn -w 2 -k <kind>` serving one of APPS, started and ready (GET /healthz)."""

    process: ManagedProcess

    def __init__(self, name: str, kind: str, threads: int, env: dict[str, str]) -> None:
        self.name, self.kind = name, kind
        self.port = free_port()
        cmd = [str(VENV_BIN / "gunicorn"), "-b", f"127.0.0.1:{self.port}", "-w", "2", "-k", kind,
               "--backlog", "2048", "--graceful-timeout", "5"]
        if kind == "gthread":
            cmd += ["--threads", str(threads)]
        if name != "full":
            cmd += ["--pythonpath", str(BENCH_DIR)]
        self.cmd = [*cmd, APPS[name]]
        self.log_path = RESULTS_DIR / f"gunicorn-{name}-{kind}.log"
        self.log_path.unlink(missing_ok=True)  # the log of this run only (log_problems)
        self.process = start_ready(self.cmd, self.log_path, env, name,
                                   f"http://127.0.0.1:{self.port}/healthz", timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def pids(self) -> list[int]:
        return descendants(self.process.pid) if self.process.pid else []

    def stop(self) -> None:
        self.process.stop(timeout=15)  # our own gunicorn master's process group, by PID

    def log_problems(self) -> list[str]:
        text = Path(self.log_path).read_text(errors="replace")
        return [ln for ln in text.splitlines() if any(w in ln for w in LOG_PROBLEMS)]
