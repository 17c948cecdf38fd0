"""The whole system as real processes, for the fault suite, with the handles to
break it: gunicorn (2 workers), two Celery workers of each pool declared in
shared/core/pools.py (validation: 2 prefork children each; fal: a threads pool;
maintenance: one prefork child), beat, a PostgreSQL database of its own on the machine's server, a Redis
the suite starts itself (so restarting it harms nothing else), LocalStack's S3
behind a fault-injecting proxy, and the fal emulator in webhook mode."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from celery import Celery

from devstack.dev import stack_environment
from devstack.fal_emulator import FalEmulatorProcess, start_emulator_process
from devstack.localstack import LocalStackS3
from devstack.procs import ManagedProcess, free_port, port_accepts, wait_until
from shared.core.config import Settings, load_settings
from shared.core.pools import POOLS, pool_of
from tests.conftest import PG_ADMIN_URL
from tests.faults.s3_proxy import FaultyS3Proxy

REPO = Path(__file__).resolve().parents[2]
# Each pool twice (a killed one has a sibling), its declared concurrency, or 2 for
# "one per core" (the machines this runs on have 2).
WORKERS = [(pool, n) for pool in POOLS for n in range(2)]

# The suite's settings: production defaults, except what makes a run short (the
# deadline, backoff base, how often the beat looks) and limits a load test would hit.
SUITE_ENV = {
    "FAL_DEADLINE_SECONDS": "60",
    "FAL_RETRY_BASE_SECONDS": "1",
    # A killed fal process (threads) leaves up to its concurrency of submissions in
    # doubt at once, and a Redis restart takes the fal workers with it: their webhooks,
    # queued behind the restart, need longer than the default 20 s to be heard before
    # a takeover submits again (docs/reliability.md).
    "FAL_IN_DOUBT_SECONDS": "30",
    "RECONCILE_INTERVAL_SECONDS": "3",
    "PRESIGN_DAILY_QUOTA": "1000",
    "TRYON_DAILY_QUOTA": "1000",
    "USER_RATE_LIMIT": "1000/second",
    "IP_RATE_LIMIT": "10000/second",
    "LOG_LEVEL": "INFO",
}


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass
class System:
    root: Path
    fal_latency: float = 8.0
    # Settings of one test's own, over SUITE_ENV.
    extra_env: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    workers: dict[str, ManagedProcess] = field(default_factory=dict)  # by node prefix
    restarts: dict[str, int] = field(default_factory=lambda: {"worker": 0, "redis": 0})
    # Workers that exited on their own and were started again, as a PaaS or compose's
    # `restart: unless-stopped` would (a threads-pool worker exits when the broker
    # goes away under it: kombu's connection close fails, Celery calls it unrecoverable).
    supervised: list[str] = field(default_factory=list)
    _killing: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> System:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        self.db_name = f"hf_faults_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        self.database_url = f"{base}/{self.db_name}"
        self.redis_port = free_port()
        self._start_redis()
        self.s3 = LocalStackS3().start(data_dir=self.root / "localstack")
        self.proxy = FaultyS3Proxy(int(self.s3.endpoint_url.rsplit(":", 1)[1])).start()
        self.fal: FalEmulatorProcess = start_emulator_process(self.root / "fal", latency=self.fal_latency)
        self.api_port = free_port()
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        env = stack_environment(self.root, self.proxy.endpoint_url, redis_url, self.fal,
                                self.api_port)
        env.update(SUITE_ENV)
        env.update(self.extra_env)
        env["DATABASE_URL"] = self.database_url
        env["BEAT_INTERVAL_SECONDS"] = "60"
        self.env = env
        prometheus = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        shutil.rmtree(prometheus, ignore_errors=True)
        prometheus.mkdir(parents=True)
        for command in ("migrate", "setup-storage"):
            subprocess.run([_bin("hairfluencer"), command], env=env, check=True,
                           capture_output=True)
        self.api = ManagedProcess([_bin("gunicorn"), "-c", "python:api.gunicorn_conf", "-b",
                                   f"127.0.0.1:{self.api_port}", "-w", "2", "api.wsgi:app"],
                                  self.logs / "api.log", env=env, cwd=REPO, name="api").start()
        self.workers = {f"{pool.name}{n}": self._worker(f"{pool.name}{n}").start()
                        for pool, n in WORKERS}
        self.beat = ManagedProcess([_bin("celery"), "-A", "worker.app", "beat", "--loglevel",
                                    "INFO", "-s", str(self.root / "beat-schedule")],
                                   self.logs / "beat.log", env=env, cwd=REPO, name="beat").start()
        if not wait_until(self._ready, 90, interval=0.5):
            raise RuntimeError("the system did not become ready:\n" + self.api.log_tail())
        threading.Thread(target=self._supervise, daemon=True, name="supervisor").start()
        if not wait_until(lambda: len(self.worker_nodes()) == len(WORKERS), 90, interval=1):
            raise RuntimeError("workers did not start:\n" + "\n".join(
                w.log_tail() for w in self.workers.values()))
        return self

    def _supervise(self) -> None:
        while not self._stopping.wait(1.0):
            with self._lock:
                for name, process in list(self.workers.items()):
                    if name not in self._killing and not process.alive():
                        self.supervised.append(name)
                        self.restarts["worker"] += 1
                        self.workers[name] = self._worker(name).start()

    def stop(self) -> None:
        self._stopping.set()
        for process in [getattr(self, "beat", None), *self.workers.values(),
                        getattr(self, "api", None)]:
            if process is not None:
                process.stop()
        for thing in ("fal", "proxy", "s3", "redis"):
            with suppress(Exception):
                getattr(self, thing).stop()
        with suppress(Exception), psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def settings(self) -> Settings:
        return load_settings(self.env)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _worker(self, name: str) -> ManagedProcess:
        pool = next(p for p in POOLS if name.rstrip("0123456789") == p.name)
        return ManagedProcess([_bin("celery"), "-A", "worker.app", "worker",
                               *pool.worker_argv(pool.concurrency or 2),
                               "-n", f"{name}-{self.restarts['worker']}@%h", "--loglevel", "INFO"],
                              self.logs / f"worker-{name}.log",
                              env={**self.env, **dict(pool.environment)}, cwd=REPO, name=name)

    # -- Redis -------------------------------------------------------------------------
    def _start_redis(self) -> None:
        directory = self.root / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        self.redis = ManagedProcess([shutil.which("redis-server") or "redis-server", "--port",
                                     str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", str(directory)],
                                    self.root / "logs" / "redis.log", name="redis").start()
        if not wait_until(lambda: port_accepts(self.redis_port), 15):
            raise RuntimeError("redis did not start")

    def restart_redis(self, down_seconds: float = 2.0) -> None:
        """Kill Redis (nothing on disk: every queue, unacked message, idempotency
        record and counter is gone) and start an empty one on the same port."""
        os.killpg(self.redis.pid, signal.SIGKILL)  # type: ignore[arg-type]
        self.redis.stop()
        time.sleep(down_seconds)
        self._start_redis()
        self.restarts["redis"] += 1

    # -- workers -----------------------------------------------------------------------
    def control(self) -> Celery:
        return Celery("fault-suite", broker=f"redis://127.0.0.1:{self.redis_port}/0")

    def worker_nodes(self) -> list[str]:
        try:
            return list((self.control().control.inspect(timeout=1).ping() or {}).keys())
        except Exception:  # noqa: BLE001 - broker restarting
            return []

    def active_tasks(self, worker: str | None = None) -> list[dict[str, Any]]:
        """What the workers are running now (of one worker only, if given)."""
        try:
            active = self.control().control.inspect(timeout=1).active() or {}
        except Exception:  # noqa: BLE001 - broker restarting
            return []
        prefix = f"{worker}-" if worker is not None else ""
        return [task | {"node": node} for node, tasks in active.items()
                if node.startswith(prefix) for task in tasks]

    def kill_running(self, task_name: str, timeout: float = 30) -> list[dict[str, Any]]:
        """SIGKILL what runs a task of this name: its prefork child, or on a threads
        pool the whole worker process (restarted 5 s later, as its supervisor
        would). Returns the tasks that died with it."""
        found: list[dict[str, Any]] = []

        def running() -> bool:
            found[:] = [t for t in self.active_tasks() if t["name"] == task_name and t.get("worker_pid")]
            return bool(found)

        if not wait_until(running, timeout, interval=0.2):
            raise AssertionError(f"no {task_name} ran within {timeout} s")
        task = found[0]
        if pool_of(task_name).kind == "prefork":
            os.kill(int(task["worker_pid"]), signal.SIGKILL)
            return [task]
        name = task["node"].split("-", 1)[0]
        running_there = self.kill_worker_whole(name)
        time.sleep(5)
        self.restart_worker(name)
        return running_there or [task]

    def kill_worker_whole(self, name: str) -> list[dict[str, Any]]:
        """The worker process and all its children at once (a lost host, an OOM kill
        of the container): its unacknowledged messages come back only after the
        broker's visibility timeout. Returns the tasks it was running."""
        running = self.active_tasks(name)
        with self._lock:
            self._killing.add(name)
            os.killpg(self.workers[name].pid, signal.SIGKILL)  # type: ignore[arg-type]
            self.workers[name].stop()
        return running

    def restart_worker(self, name: str) -> None:
        with self._lock:
            self.restarts["worker"] += 1
            self.workers[name] = self._worker(name).start()
            self._killing.discard(name)

    # -- PostgreSQL --------------------------------------------------------------------
    def terminate_db_connections(self) -> int:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (self.db_name,)).fetchall()
        return sum(1 for (ok,) in rows if ok)

    # -- metrics -----------------------------------------------------------------------
    def metric(self, name: str) -> float:
        """Sum of a counter over all processes (the API aggregates the multiprocess
        directory the workers write too)."""
        text = httpx.get(f"{self.api_url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                if head.split("{")[0] == name:
                    total += float(value)
        return total
