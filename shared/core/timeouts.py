"""Timeouts that nest: each outbound call's worst case, in wall-clock seconds.

Every dependency has one budget in Settings (its worst case from the call's
start); the per-socket timeouts, attempts and backoffs below are derived from it,
so the budget is what docs/reliability.md adds up under gunicorn's timeout. A
socket timeout bounds one connect or one read, never a whole call, which is why
each client here makes a fixed, small number of attempts and no hidden retries:
a `redis.Redis(...)` of redis-py 6+ retries three times with up to 10 s of backoff
(one built by `from_url` does not: the attempts are pinned here either way),
botocore's legacy mode makes `max_attempts + 1` tries, psycopg waits 130 s for an
unanswering server, kombu's Redis transport forever.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.core.config import Settings

# S3 (botocore "standard" retry mode): two attempts; the backoff before the second
# is rand × 50 ms after a timeout or a 5xx and rand × 1 s after throttling.
S3_ATTEMPTS = 2
S3_MAX_BACKOFF_SECONDS = 1.0
# The broker: two sends (a pooled connection the broker dropped fails at once, and
# the second send reconnects), each one connect and one unanswered read at most.
BROKER_TRIES = 2


def s3_socket_timeout(budget: float) -> float:
    """connect_timeout = read_timeout for botocore: each attempt is one connect and
    one wait for the answer, and the attempts' backoff comes off the budget first."""
    return (budget - S3_MAX_BACKOFF_SECONDS * (S3_ATTEMPTS - 1)) / (2 * S3_ATTEMPTS)


def redis_options(budget: float) -> dict[str, Any]:
    """Keyword arguments for `redis.Redis.from_url` (and `limits`' RedisStorage): one
    attempt, whose connect and whose read each get half the budget. No client
    name or library version is sent on connect, so a new connection costs no
    round trip before the command (with a password or a database other than 0,
    AUTH or SELECT is one more read, each bounded by the same timeout)."""
    half = budget / 2
    return {"socket_connect_timeout": half, "socket_timeout": half,
            "retry": Retry(NoBackoff(), 0), "driver_info": None}


def bounded_redis(url: str, budget: float) -> redis.Redis:
    """A Redis client whose every command fails within `budget` seconds."""
    return redis.Redis.from_url(url, **redis_options(budget))


def broker_transport_options(budget: float) -> dict[str, float]:
    """kombu's Redis transport waits forever on a connect or a read by default (an
    unanswering broker stalled a send indefinitely): each gets a quarter of the
    budget. The worker's BRPOP reads only once its socket is readable, so this
    does not cut its long polls short."""
    per_operation = budget / (2 * BROKER_TRIES)
    return {"socket_timeout": per_operation, "socket_connect_timeout": per_operation}


def db_connect_worst_case(s: Settings) -> float:
    """Waiting for a pooled connection, then opening one (libpq's connect_timeout
    counts per address a host name resolves to: give the API one address)."""
    return s.db_pool_timeout_seconds + s.db_connect_timeout_seconds


def readiness_worst_case(s: Settings) -> float:
    """The longest request path: GET /readyz asks every dependency in turn
    (the database, Redis, the broker and both buckets), even after one failed."""
    return (db_connect_worst_case(s) + s.redis_timeout_seconds + s.broker_timeout_seconds
            + 2 * s.s3_timeout_seconds)


def request_worst_case(s: Settings) -> float:
    """An API request meets each dependency at its worst at most once: a failed call
    ends the request (503), except a JWKS fetch (the cached key set goes on) and a
    task send (left for the reconciler), after which the request carries on."""
    return (s.jwt_jwks_fetch_timeout_seconds + db_connect_worst_case(s)
            + s.redis_timeout_seconds + s.s3_timeout_seconds + s.broker_timeout_seconds)
