"""The environment of the app processes a benchmark starts, and starting them
(devstack.procs: own process group, log file, readiness probe, stop by PID)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from bench.common.paths import REPO_ROOT
from devstack.localstack import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY
from devstack.procs import ManagedProcess, python_env

# Inherited variables that would change the app under test.
SCRUB = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR",
         "SENTRY_DSN", "JWT_JWKS_URL", "JWT_ISSUER", "S3_PUBLIC_ENDPOINT_URL",
         "TRUSTED_PROXY_COUNT", "WEBHOOK_SECRET", "FAL_QUEUE_RUN_HOST", "HF_TEST_S3_ENDPOINT",
         "DELETE_SELFIE_AFTER_JOB", "FACE_DETECTION_ENABLED", "CLAMD_ADDRESS", "NSFW_DETECTOR")
UNLIMITED_QUOTA = "1000000000"


def app_env(*, database_url: str, redis_url: str, s3_endpoint_url: str, jwt_dev_secret: str,
            rate_limit: str, **extra: str) -> dict[str, str]:
    """Our environment without SCRUB, plus the app's settings: development mode, the
    given servers, the benchmark's own HS256 secret, and quotas and rate limits
    lifted (still counted in Redis, so every request makes its Redis calls)."""
    base = {k: v for k, v in os.environ.items() if k not in SCRUB}
    return python_env(
        base,
        HAIRFLUENCER_ENV="development",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        S3_ENDPOINT_URL=s3_endpoint_url,
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        S3_REGION=REGION,
        JWT_DEV_SECRET=jwt_dev_secret,
        JWT_AUDIENCE="hairfluencer-api",
        PRESIGN_DAILY_QUOTA=UNLIMITED_QUOTA,
        USER_RATE_LIMIT=rate_limit,
        IP_RATE_LIMIT=rate_limit,
        LOG_LEVEL="INFO",
        **extra,
    )


def answers_200(url: str) -> bool:
    """The readiness probe of the HTTP servers: GET url answers 200."""
    return httpx.get(url, timeout=3).status_code == 200


def start_ready(args: Sequence[str], log_path: Path, env: Mapping[str, str], name: str,
                ready_url: str, timeout: float = 60.0) -> ManagedProcess:
    """Start a server in the repository root and wait until ready_url answers 200;
    on failure it is stopped and LaunchError names the last lines of its log."""
    return ManagedProcess(args, log_path, env=env, cwd=REPO_ROOT, name=name).start_until_ready(
        lambda: answers_200(ready_url), timeout, interval=0.3)
