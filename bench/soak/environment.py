"""The ambient environment the dev stack is started with: `devstack.dev.running_stack`
takes every setting it does not own from os.environ, so the soak's settings are put
there (and taken back afterwards) instead of into a copy of the stack's code."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from bench.common.launch import SCRUB, UNLIMITED_QUOTA

# The load generator signs its users' tokens with this (HS256, development only).
DEV_SECRET = "soak-bench-only-hs256-secret-0123456789abcdefghijklmnopq"  # noqa: S105


def soak_settings() -> dict[str, str]:
    """Development mode, the soak's own secret, quotas and rate limits lifted (still
    counted in Redis, so every request makes its Redis calls, as in the try-on bench)."""
    return {
        "HAIRFLUENCER_ENV": "development",
        "JWT_DEV_SECRET": DEV_SECRET,
        "JWT_AUDIENCE": "hairfluencer-api",
        "PRESIGN_DAILY_QUOTA": UNLIMITED_QUOTA,
        "TRYON_DAILY_QUOTA": UNLIMITED_QUOTA,
        "USER_RATE_LIMIT": f"{UNLIMITED_QUOTA}/second",
        "IP_RATE_LIMIT": f"{UNLIMITED_QUOTA}/second",
        "LOG_LEVEL": "INFO",
    }


@contextlib.contextmanager
def ambient(settings: dict[str, str]) -> Iterator[None]:
    """os.environ without the inherited variables that would change the app under test
    (bench.common.launch.SCRUB: another database, broker, Sentry...), plus `settings`;
    restored on the way out."""
    saved = dict(os.environ)
    try:
        for key in SCRUB:
            os.environ.pop(key, None)
        os.environ.update(settings)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
