"""Flower in the development stack: behind basic auth, on loopback only.

Flower can revoke and terminate tasks and shut workers down, so even the local
one asks for a password: a random one per checkout, kept git-ignored beside the
development JWT secret (`.devstack/flower-password`), user `flower`.

The credentials reach Flower through its own `FLOWER_BASIC_AUTH` variable rather
than `--basic-auth=` on the command line: a process's arguments are readable by
every user of the machine (`ps`), its environment only by its owner.

`--enable_events=False`: Flower would otherwise broadcast `enable_events` to every
worker every 5 s (idle broker traffic and worker CPU) and switch task events on in
workers configured without them. The workers' own setting (`worker_send_task_events`
in celeryconfig.py) is the one switch; Flower's task list needs those events
(task-received/started/succeeded), its worker list needs none (it inspects).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from devstack.procs import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOWER_USER = "flower"
# Flower is a live view: it keeps this many recent tasks (~10 KiB each) in memory and
# drops the oldest. Its default, 100,000, is ~0.6 GB; history is in the metrics and
# logs (docs/operations.md, "Flower"). The Procfile and compose pass the same number.
MAX_TASKS = 1000
PASSWORD_FILE = REPO_ROOT / ".devstack" / "flower-password"
READY_TIMEOUT = 60.0


def flower_password(path: Path = PASSWORD_FILE) -> str:
    """The checkout's Flower password, created (mode 0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(24))  # no ',' or ':' (Flower's separators)
        try:
            # link, not replace: when two stacks start at once, the first one's
            # password stays, so both print the one Flower accepts.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    return path.read_text().strip()


def flower_process(port: int, env: Mapping[str, str], log_path: Path, password: str,
                   cwd: Path = REPO_ROOT) -> ManagedProcess:
    """`celery -A worker.app flower` on 127.0.0.1:`port` with basic auth (not started)."""
    # Ambient FLOWER_* settings (FLOWER_UNAUTHENTICATED_API, another address...) are
    # dropped: the dev stack's Flower is always this one.
    flower_env = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}
    flower_env["FLOWER_BASIC_AUTH"] = f"{FLOWER_USER}:{password}"
    celery = str(Path(sys.executable).with_name("celery"))
    return ManagedProcess(
        [celery, "-A", "worker.app", "flower", "--address=127.0.0.1", f"--port={port}",
         "--enable_events=False", "--persistent=False", f"--max_tasks={MAX_TASKS}"],
        log_path, env=flower_env, cwd=cwd, name="flower")


def flower_ready(base: str) -> bool:
    """Flower answers its (unauthenticated) health check."""
    try:
        return httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
