"""The Procfile read as honcho (and a PaaS) reads it: its process types, and what the
test needs to know of each. The types are never listed here: a type added to the
Procfile is started, scraped and checked like the others. Only the HTTP servers are
known by name, for how to reach them: `web` listens on PORT (and WEB_ADDRESS), `hooks`
(fal's webhooks) on HOOKS_PORT (and WEB_ADDRESS), Flower on FLOWER_ADDRESS:FLOWER_PORT
behind FLOWER_BASIC_AUTH."""

from __future__ import annotations

import shlex
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from honcho.environ import parse_procfile

REPO = Path(__file__).resolve().parents[2]
RELEASE = "release"
WEB = "web"
HOOKS = "hooks"
FLOWER = "flower"


@dataclass(frozen=True)
class CeleryWorker:
    """A `celery ... worker` entry: the node name Flower lists it by, and its queues."""

    node: str
    queues: tuple[str, ...]


def process_types(procfile: Path) -> dict[str, str]:
    """Every entry, in the Procfile's order, with honcho's own parser."""
    return dict(parse_procfile(procfile.read_text()).processes)


def serves_metrics(name: str) -> bool:
    """Every long-running process serves its own metrics (SPEC §8), except Flower,
    which is Celery's monitor, not the application."""
    return name not in (RELEASE, FLOWER)


def celery_worker(command: str) -> CeleryWorker | None:
    """The worker an entry runs, or None for any other entry. `%h` is expanded as
    Celery expands it (this host's name)."""
    argv = shlex.split(command)
    if "celery" not in argv or "worker" not in argv[argv.index("celery"):]:
        return None
    node = _option(argv, "-n", "--hostname") or "celery@%h"
    queues = _option(argv, "-Q", "--queues") or "celery"
    return CeleryWorker(node.replace("%h", socket.gethostname()), tuple(queues.split(",")))


def bind_host(command: str, env: Mapping[str, str]) -> str | None:
    """The host gunicorn's `-b` names once the shell has expanded it in `env` (None
    without a `-b`: gunicorn then binds 0.0.0.0:$PORT when PORT is set)."""
    bind = _option(shlex.split(command), "-b", "--bind")
    if bind is None:
        return None
    expanded = subprocess.run(["sh", "-c", f'printf %s "{bind}"'], env=dict(env),
                              capture_output=True, text=True, timeout=10, check=True).stdout
    return expanded.rsplit(":", 1)[0]


def _option(argv: list[str], *names: str) -> str | None:
    for index, arg in enumerate(argv[:-1]):
        if arg in names:
            return argv[index + 1]
    for arg in argv:
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None
