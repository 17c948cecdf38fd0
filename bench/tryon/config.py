"""The try-on benchmark's settings: the API/worker shapes it runs (`Config`) and the
one environment every process of the stack gets."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench.common.launch import UNLIMITED_QUOTA, app_env
from devstack.fal_emulator import FalEmulatorProcess
from devstack.localstack import MotoS3
from devstack.redis_server import RedisServer
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
