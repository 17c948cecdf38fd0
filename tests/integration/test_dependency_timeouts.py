"""Timeouts that nest (docs/reliability.md): a dependency that accepts connections and
never answers costs the API at most its budget, and the client gets 503
`service.unavailable` with Retry-After, never a connection gunicorn cut.

Each case points one dependency at a black hole on 127.0.0.1 with a short budget,
so it takes about a second."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import create_engine

from api.context import EXTENSION
from shared.core.config import Settings
from shared.core.tasks import ping_broker, send
from shared.core.timeouts import BROKER_TRIES, broker_transport_options
from shared.services import Services
from shared.storage.base import sha256_b64
from tests.conftest import assert_error

# What the test process adds to a bound: Flask, the handler, a loaded CI machine.
SLACK_SECONDS = 1.0


class BlackHole:
    """Accepts TCP connections and never sends a byte (nor closes them)."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self.port = self._server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._server.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


@pytest.fixture
def app_with(settings: Settings) -> Iterator[Callable[..., Any]]:
    """An app on the test stack with some settings changed; its own Services, so the
    shared fixtures' teardown never talks to a black hole."""
    built: list[Services] = []

    def make(**changes: Any) -> Any:
        from api.app import create_app

        svc = Services.from_settings(replace(settings, **changes))
        svc.dispatch = lambda *_args, **_kwargs: True
        built.append(svc)
        flask_app = create_app(svc.settings, svc, configure_logs=False)
        flask_app.testing = True
        return flask_app

    yield make
    for svc in built:
        svc.engine.dispose()


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def assert_unavailable(response: Any) -> None:
    assert_error(response, 503, "service.unavailable")
    assert response.headers["Retry-After"] == "5"


def test_black_holed_s3_answers_503_within_its_budget(app_with, auth, black_hole):
    budget = 2.0
    client = app_with(s3_endpoint_url=f"http://127.0.0.1:{black_hole.port}",
                      s3_timeout_seconds=budget).test_client()
    data = b"\xff\xd8 not needed: confirm fails at its HEAD"
    issued = client.post("/v1/uploads/presign", headers=auth("tim"), json={
        "contentType": "image/jpeg", "contentLength": len(data),
        "checksum": sha256_b64(data)})
    assert issued.status_code == 201  # presigning is local: no call reaches S3

    response, elapsed = timed(lambda: client.post(
        "/v1/uploads/confirm", headers=auth("tim"), json={"key": issued.get_json()["key"]}))

    assert_unavailable(response)
    assert elapsed <= budget + SLACK_SECONDS
    assert 1 <= len(black_hole.accepted) <= 2  # two attempts at most, no hidden retries


def test_black_holed_redis_answers_503_within_its_budget(app_with, auth, black_hole):
    budget = 0.5
    client = app_with(redis_url=f"redis://127.0.0.1:{black_hole.port}/0",
                      redis_timeout_seconds=budget).test_client()

    response, elapsed = timed(lambda: client.get("/v1/uploads", headers=auth("tim")))

    assert_unavailable(response)
    assert elapsed <= budget + SLACK_SECONDS
    assert len(black_hole.accepted) == 1  # redis-py's default three retries are off


def test_postgres_silent_at_connect_answers_503_within_its_budget(app_with, auth, black_hole):
    client = app_with(
        database_url=f"postgresql+psycopg://hf@127.0.0.1:{black_hole.port}/hf",
        db_connect_timeout_seconds=2).test_client()

    response, elapsed = timed(lambda: client.get("/v1/uploads", headers=auth("tim")))

    assert_unavailable(response)
    assert elapsed <= 2 + SLACK_SECONDS


def test_no_free_pooled_connection_answers_503_not_500(app_with, auth, settings):
    """SQLAlchemy's pool wait raises its TimeoutError, which is no OperationalError."""
    app = app_with()
    svc = app.extensions[EXTENSION].svc
    svc.engine.dispose()
    svc.engine = create_engine(settings.database_url, pool_size=1, max_overflow=0,
                               pool_timeout=0.5)
    svc.sessions.configure(bind=svc.engine)
    client = app.test_client()
    with svc.engine.connect():  # the only connection, held
        response, elapsed = timed(lambda: client.get("/v1/uploads", headers=auth("tim")))

    assert_unavailable(response)
    assert elapsed <= 0.5 + SLACK_SECONDS


def test_black_holed_broker_leaves_the_send_to_the_reconciler_within_its_budget(black_hole):
    """A task the API could not send is not an error for the request (the row is
    committed and the beat re-sends it), but the send must give up in time."""
    budget = 1.0
    app = Celery("timeouts-test", broker=f"redis://127.0.0.1:{black_hole.port}/0")
    app.conf.broker_transport_options = broker_transport_options(budget)

    sent, elapsed = timed(lambda: send("hf.test.noop", "x", app=app))

    assert sent is False
    assert elapsed <= budget + SLACK_SECONDS
    assert 1 <= len(black_hole.accepted) <= BROKER_TRIES


def test_readiness_gives_up_on_a_black_holed_broker_within_half_its_budget(black_hole):
    budget = 1.0
    app = Celery("timeouts-test", broker=f"redis://127.0.0.1:{black_hole.port}/0")
    app.conf.broker_transport_options = broker_transport_options(budget)

    started = time.monotonic()
    with pytest.raises(KombuOperationalError):
        ping_broker(app)

    assert time.monotonic() - started <= budget / 2 + SLACK_SECONDS
    assert len(black_hole.accepted) == 1
