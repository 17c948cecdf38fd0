"""Timeouts that nest: the budgets add up under gunicorn's timeout, and every client
is built with the bounds derived from its budget (docs/reliability.md)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from api import gunicorn_conf
from shared.core.config import ConfigError, load_settings
from shared.core.db import make_engine
from shared.core.timeouts import (
    BROKER_TRIES,
    S3_ATTEMPTS,
    S3_MAX_BACKOFF_SECONDS,
    bounded_redis,
    broker_transport_options,
    readiness_worst_case,
    redis_options,
    request_worst_case,
    s3_socket_timeout,
)
from shared.storage.s3 import S3Storage
from tests.conftest import make_settings

# What gunicorn must have left after the longest request path: the app's own work
# and the 503 answer itself.
MARGIN_SECONDS = 5


def test_the_longest_request_path_ends_well_before_gunicorn_kills_the_worker():
    defaults = load_settings({"JWT_DEV_SECRET": "x"})  # the shipped defaults

    assert readiness_worst_case(defaults) + MARGIN_SECONDS <= gunicorn_conf.timeout
    assert request_worst_case(defaults) + MARGIN_SECONDS <= gunicorn_conf.timeout
    # And no single dependency may take the worker's whole life.
    for budget in (defaults.s3_timeout_seconds, defaults.redis_timeout_seconds,
                   defaults.broker_timeout_seconds,
                   defaults.db_connect_timeout_seconds + defaults.db_pool_timeout_seconds):
        assert budget <= gunicorn_conf.timeout / 3


def test_s3_client_attempts_and_timeouts_fill_the_budget_and_no_more():
    s = make_settings(s3_endpoint_url="http://127.0.0.1:1", s3_timeout_seconds=6)
    config = S3Storage(s).client.meta.config
    per_socket = s3_socket_timeout(6)

    assert config.connect_timeout == config.read_timeout == per_socket
    assert config.retries == {"mode": "standard", "total_max_attempts": S3_ATTEMPTS}
    worst = S3_ATTEMPTS * (config.connect_timeout + config.read_timeout) + \
        S3_MAX_BACKOFF_SECONDS * (S3_ATTEMPTS - 1)
    assert worst == pytest.approx(6)


def test_redis_client_makes_one_attempt_within_the_budget():
    client = bounded_redis("redis://127.0.0.1:1/0", 2)
    kwargs = client.connection_pool.connection_kwargs

    assert kwargs["socket_connect_timeout"] + kwargs["socket_timeout"] == pytest.approx(2)
    assert kwargs["retry"].get_retries() == 0
    assert redis_options(2)["driver_info"] is None  # no SETINFO round trip on connect


def test_broker_sends_fit_the_budget():
    options = broker_transport_options(4)

    assert BROKER_TRIES * (options["socket_connect_timeout"] + options["socket_timeout"]) \
        == pytest.approx(4)


def test_postgres_engine_bounds_the_pool_wait_and_the_connect():
    engine = make_engine("postgresql+psycopg://hf@127.0.0.1:1/hf", connect_timeout=3,
                         pool_timeout=2)
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def _capture(_dialect: Any, _record: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.update(kwargs)

    with pytest.raises(OperationalError):  # nothing listens on port 1
        engine.connect()
    assert seen["connect_timeout"] == 3
    assert engine.pool.timeout() == 2


def test_connect_timeouts_under_libpqs_minimum_are_refused():
    with pytest.raises(ConfigError, match="DB_CONNECT_TIMEOUT_SECONDS"):
        make_settings(db_connect_timeout_seconds=1)
