"""The app part of the stack: API (gunicorn, webhook mode), one Celery worker per pool
of the layout, and beat, restarted per configuration around long-lived S3, Redis,
emulator and database."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

from bench.common.launch import start_ready
from bench.common.paths import REPO_ROOT, VENV_BIN
from bench.common.procfs import descendants
from bench.tryon.config import QUEUES, Config
from devstack.procs import ManagedProcess, free_port

READY_TIMEOUT = 60.0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def _celery(*args: str) -> list[str]:
    return [str(VENV_BIN / "celery"), "-A", "worker.app", *args]


class Stack:
    def __init__(self, env: dict[str, str], api_port: int, logs: Path, state: Path) -> None:
        self.env = env
        self.state = state
        self.api_port = api_port
        self.base = f"http://127.0.0.1:{api_port}"
        self.logs = logs
        self.api: ManagedProcess | None = None
        self.hooks: ManagedProcess | None = None
        self.hooks_port = free_port()
        self.workers: list[ManagedProcess] = []
        self.beat: ManagedProcess | None = None
        self.config: Config | None = None
        self._n = itertools.count()

    def start_beat(self) -> None:
        self.beat = ManagedProcess(
            _celery("beat", "--loglevel", "INFO", "-s", str(self.state / "beat-schedule")),
            self.logs / "beat.log", env=self.env, cwd=REPO_ROOT, name="beat").start()

    def start(self, config: Config) -> None:
        """(Re)start API and worker in this shape; waits until both serve."""
        self.stop_app()
        n = next(self._n)
        self.config = config
        api_cmd = [str(VENV_BIN / "gunicorn"), "-c", "python:api.gunicorn_conf",
                   "-b", f"127.0.0.1:{self.api_port}", "-w", str(config.api_workers),
                   "-k", config.api_kind, "--backlog", "2048"]
        if config.api_kind == "gthread":
            api_cmd += ["--threads", str(config.api_threads)]
        self.api = start_ready([*api_cmd, "api.wsgi:app"],
                               self.logs / f"api-{n}-{_slug(config.label)}.log", self.env, "api",
                               f"{self.base}/readyz", READY_TIMEOUT)
        # Where fal's webhooks go: a listener of their own, or the API.
        hooks_base = f"http://127.0.0.1:{self.hooks_port}" if config.hooks_workers else self.base
        self.env["PUBLIC_BASE_URL"] = hooks_base
        if config.hooks_workers:
            self.hooks = start_ready(
                [str(VENV_BIN / "gunicorn"), "-c", "python:api.gunicorn_conf",
                 "-b", f"127.0.0.1:{self.hooks_port}", "-w", str(config.hooks_workers),
                 "api.wsgi:app"],
                self.logs / f"hooks-{n}-{_slug(config.label)}.log", self.env, "hooks",
                f"{hooks_base}/readyz", READY_TIMEOUT)
        for pool, name in ((p, name) for p in config.pools for name in p.process_names()):
            worker = ManagedProcess(
                _celery("worker", *pool.worker_argv(), "--loglevel", "INFO",
                        "-n", f"{name}-bench-{n}@%h"),
                self.logs / f"worker-{n}-{_slug(config.label)}-{name}.log",
                env={**self.env, **dict(pool.environment)},
                cwd=REPO_ROOT, name=f"worker-{name}")
            self.workers.append(worker.start_until_ready(
                lambda w=worker: "ready." in w.log_path.read_text(errors="replace"),  # type: ignore[misc]
                READY_TIMEOUT, interval=0.3))

    def stop_app(self) -> None:
        for proc in (*self.workers, self.api, self.hooks):
            if proc is not None:
                proc.stop(timeout=20)
        self.workers = []
        self.api = self.hooks = None

    def stop(self) -> None:
        self.stop_app()
        if self.beat is not None:
            self.beat.stop()
            self.beat = None

    def purge_broker(self) -> None:
        """Drop queued messages (e.g. the previous run's 1,000 deadline tasks, due in
        2 minutes and no-ops for finished jobs), with no worker running."""
        subprocess.run(_celery("purge", "-f", "-Q", QUEUES), env=self.env, cwd=REPO_ROOT,
                       capture_output=True, timeout=60, check=False)

    def worker_pids(self) -> list[int]:
        return [pid for w in self.workers if w.pid for pid in descendants(w.pid)]

    def pool_pids(self) -> dict[str, list[int]]:
        """Each pool's worker: its main process and children."""
        return {w.name: descendants(w.pid) for w in self.workers if w.pid}

    def worker_logs(self) -> list[Path]:
        return [w.log_path for w in self.workers]

    def api_pids(self) -> list[int]:
        """The API's gunicorn and, if there is one, the webhook listener's."""
        return [pid for proc in (self.api, self.hooks) if proc and proc.pid
                for pid in descendants(proc.pid)]

    def hooks_log(self) -> Path | None:
        return self.hooks.log_path if self.hooks else None

    def beat_pids(self) -> list[int]:
        return [self.beat.pid] if self.beat and self.beat.pid else []

