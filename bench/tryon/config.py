"""The try-on benchmark's settings: the API/worker shapes it runs (`Config`) and the
one environment every process of the stack gets."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

from bench.common.launch import UNLIMITED_QUOTA, app_env
from devstack.fal_emulator import FalEmulatorProcess
from devstack.localstack import MotoS3
from devstack.redis_server import RedisServer
from shared.core.pools import POOLS, Pool
from shared.core.task_names import ALL_QUEUES

DEV_SECRET = "tryon-bench-only-hs256-secret-0123456789abcdefghijklmnop"  # noqa: S105
QUEUES = ",".join(ALL_QUEUES)  # declared once: shared/core/task_names.py
STYLES = ["pixie-cut", "long-waves", "bob", "curly-afro", "buzz-cut", "copper-balayage"]

Plan = list[tuple[str, str, str]]  # (user, upload id, hairstyle) per job


def plan_jobs(users: list[str], uploads: dict[str, str], n: int) -> Plan:
    """Job i goes to user i mod len(users) (with that user's upload) and style i mod 6."""
    return [(users[i % len(users)], uploads[users[i % len(users)]], STYLES[i % len(STYLES)])
            for i in range(n)]


def stack_env(db_url: str, s3: MotoS3, redis: RedisServer, fal: FalEmulatorProcess,
              api_port: int, prom_dir: Path) -> dict[str, str]:
    """What devstack/dev.py's stack_environment gives every process, on PostgreSQL and
    with the benchmark's own secret and lifted limits."""
    return app_env(
        database_url=db_url, redis_url=redis.url, s3_endpoint_url=s3.endpoint_url,
        jwt_dev_secret=DEV_SECRET, rate_limit=f"{UNLIMITED_QUOTA}/second",
        CELERY_BROKER_URL=redis.url,
        PROMETHEUS_MULTIPROC_DIR=str(prom_dir),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{api_port}",
        FAL_QUEUE_HOST=f"127.0.0.1:{fal.port}",
        FAL_KEY="emulator-key",
        FAL_WEBHOOK_JWKS_URL=fal.jwks_url,
        FAL_MEDIA_HOSTS=f"127.0.0.1:{fal.port}",
        SSL_CERT_FILE=str(fal.ca_bundle_path),
        TRYON_DAILY_QUOTA=UNLIMITED_QUOTA,
    )


def pool_label(pool: Pool) -> str:
    return f"{pool.name}={pool.kind}:{pool.concurrency}"


def _declared() -> list[Pool]:
    """The declared pools, each with its concurrency resolved (cores for None)."""
    return [replace(p, concurrency=p.concurrency or os.cpu_count() or 1,
                    processes=p.processes_per_host()) for p in POOLS]


def parse_layout(text: str) -> tuple[Pool, ...]:
    """`prefork:2` (one worker on every queue, as before pools by kind), `pools` (the
    layout declared in shared/core/pools.py, which the dev stack runs), or `pools`
    followed by `;name=kind:C` overrides and `;name=kind:C@q1+q2` additions (queues
    named there leave the pools that had them; a pool left without one is dropped):
    `pools;fal=threads:32`, `pools;finish=threads:8@tryons_done`; `xN` runs N processes
    of the pool: `pools;fal=threads:8x2`."""
    head, *changes = text.split(";")
    if head != "pools":
        kind, _, c = head.partition(":")
        if changes or kind not in ("prefork", "threads", "solo"):
            raise argparse.ArgumentTypeError(f"bad worker layout {text!r}")
        return (Pool("all", ALL_QUEUES, kind, int(c or 2)),)
    pools = {p.name: p for p in _declared()}
    for change in changes:
        name, _, spec = change.partition("=")
        kind_c, _, queues = spec.partition("@")
        kind, _, c = kind_c.partition(":")
        c, _, processes = c.partition("x")  # `threads:8x2`: two processes of 8 threads
        if kind not in ("prefork", "threads", "solo") or not c.isdigit() \
                or not (processes or "1").isdigit():
            raise argparse.ArgumentTypeError(f"bad pool {change!r} in {text!r}")
        moved = tuple(queues.split("+")) if queues else None
        if moved is None and name not in pools:
            raise argparse.ArgumentTypeError(f"new pool {name!r} needs @queues")
        if moved:
            pools = {n: replace(p, queues=tuple(q for q in p.queues if q not in moved))
                     for n, p in pools.items()}
        queues_of = moved or pools[name].queues
        base = pools.get(name) or Pool(name, queues_of, kind, None)
        pools[name] = replace(base, kind=kind, concurrency=int(c), queues=queues_of,
                              processes=int(processes) if processes else base.processes,
                              max_tasks_per_child=base.max_tasks_per_child if kind == "prefork"
                              else None)
    return tuple(p for p in pools.values() if p.queues)


@dataclass(frozen=True)
class Config:
    """One API + worker shape, written `sync:2+hooks:2/pools`, `sync:2/prefork:4` or
    `gthread:2x4/pools;fal=threads:32`; `+hooks:N` runs fal's webhooks on a gunicorn
    of their own (N sync workers), as the dev stack does."""

    api_kind: str
    api_workers: int
    api_threads: int
    layout: str
    pools: tuple[Pool, ...]
    # gunicorn sync workers of a listener for fal's webhooks alone (0: the API takes them)
    hooks_workers: int = 0

    @classmethod
    def parse(cls, text: str) -> Config:
        api, _, wk = text.partition("/")
        api, _, hooks = api.partition("+")
        hooks_workers = 0
        if hooks:
            name, _, h = hooks.partition(":")
            if name != "hooks":
                raise argparse.ArgumentTypeError(f"bad config {text!r}")
            hooks_workers = int(h or 2)
        kind, _, n = api.partition(":")
        threads = 1
        if "x" in n:
            n, t = n.split("x", 1)
            threads = int(t)
        if kind not in ("sync", "gthread"):
            raise argparse.ArgumentTypeError(f"bad config {text!r}")
        return cls(kind, int(n or 2), threads if kind == "gthread" else 1, wk or "pools",
                   parse_layout(wk or "pools"), hooks_workers)

    @property
    def label(self) -> str:
        api = f"{self.api_kind}:{self.api_workers}" + (
            f"x{self.api_threads}" if self.api_kind == "gthread" else "") + (
            f"+hooks:{self.hooks_workers}" if self.hooks_workers else "")
        return f"{api}/{self.layout}"
