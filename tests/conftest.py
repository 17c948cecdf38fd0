"""Shared fixtures: real PostgreSQL, Redis and the signature-checking S3 endpoint.

- PostgreSQL: a fresh database per test session (created, migrated with Alembic,
  dropped), tables emptied after each test.
- fal: one emulator for the session (the real fal-client talks to it).
- Redis: the machine's server; each test gets its own key namespace.
- S3: LocalStack's S3 in host mode, started once per session (set
  HF_TEST_S3_ENDPOINT to reuse one that is already running). Buckets get unique
  names because LocalStack has no reset.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from PIL import Image
from sqlalchemy import text

import worker.tasks  # noqa: F401  - registers the real tasks the dispatch runs
from shared.access.quota import QuotaService
from shared.core.config import Settings, load_settings
from shared.core.observability import json_handler, quiet_noisy_loggers
from shared.core.tasks import celery_app
from shared.services import Services
from worker.base import use_services

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PG_ADMIN_URL = os.environ.get("HF_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("HF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEV_SECRET = "test-secret-for-hs256-development-tokens-only"
SECRET_MARKERS = ("X-Amz-Signature", "X-Amz-Credential", "Signature=")
# A credential in a log line: the parameter followed by anything but the redaction mark.
SECRET_PATTERN = re.compile(
    r"(X-Amz-Signature|X-Amz-Credential|Signature|token|fal_webhook)(=|%3D)(?!\[redacted\])",
    re.IGNORECASE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath) or "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


class WorkerDied(BaseException):  # noqa: N818 - it is not an error the code handles
    """Stands in for SIGKILL in tests that run a step in-process: a BaseException the
    code under test does not catch, so nothing after it runs (tests/faults kills real
    processes)."""


def shift_clock(svc: Services, seconds: float) -> None:
    """Move the services' clock forward (leases, deadlines and due times end)."""
    real = svc.clock
    svc.clock = lambda: real() + timedelta(seconds=seconds)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_image(name: str) -> Image.Image:
    """A fully loaded copy of a fixture photo (the file is closed again)."""
    with Image.open(FIXTURES / name) as image:
        image.load()
        return image.copy()


# --- servers ---------------------------------------------------------------

@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("HF_TEST_S3_ENDPOINT")
    if existing:
        yield existing
        return
    from devstack.localstack import LocalStackS3, ensure_installed

    ensure_installed()
    server = LocalStackS3().start(data_dir=tmp_path_factory.mktemp("localstack"))
    try:
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"hf_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{base}/{name}"
    from shared.core.migrate import upgrade

    upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def buckets(s3_endpoint: str) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    uploads, processed = f"hf-up-{suffix}", f"hf-proc-{suffix}"
    from shared.storage.setup import apply

    settings = make_settings(s3_endpoint_url=s3_endpoint, uploads_bucket=uploads,
                             processed_bucket=processed)
    lines = list(apply(settings))
    assert all("not applied" not in line for line in lines if "bucket:" in line), lines
    return uploads, processed


def make_settings(**overrides: Any) -> Settings:
    env = {
        "HAIRFLUENCER_ENV": "development",
        "DATABASE_URL": "sqlite://",
        "REDIS_URL": REDIS_URL,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "S3_REGION": "us-east-1",
        "JWT_DEV_SECRET": DEV_SECRET,
        "JWT_AUDIENCE": "hairfluencer-api",
        "LOG_LEVEL": "INFO",
    }
    names = {f_name: env_name for env_name, f_name in _FIELD_BY_ENV.items()}
    for key, value in overrides.items():
        env[names[key]] = str(value)
    return load_settings(env)


def _field_by_env() -> dict[str, str]:
    from dataclasses import fields

    return {f.metadata["env"]: f.name for f in fields(Settings)}


_FIELD_BY_ENV = _field_by_env()


# --- the system under test -------------------------------------------------

@dataclass
class InlineDispatch:
    """Stands in for the broker at the boundary the code really uses
    (`Services.dispatch`) and runs the worker's real Celery tasks in this process
    (their bodies, with a request id as a delivery has; autoretry re-raises, as a
    task called directly does): a task sent without a countdown runs at once, one
    sent with a countdown runs when `run_due` finds it due (real time, so backoffs
    and polls behave as on a worker)."""

    sent: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    scheduled: list[tuple[float, str, tuple[Any, ...]]] = field(default_factory=list)
    broker_down: bool = False
    run_inline: bool = True

    def __call__(self, name: str, *args: Any, countdown: float | None = None) -> bool:
        if self.broker_down:
            return False
        self.sent.append((name, args))
        if countdown:
            self.scheduled.append((time.monotonic() + countdown, name, args))
        elif self.run_inline:
            self.run_task(name, *args)
        return True

    @staticmethod
    def run_task(name: str, *args: Any) -> Any:
        task = celery_app.tasks[name]
        task.push_request(id=uuid.uuid4().hex, headers={})
        try:
            return task.run(*args)
        finally:
            task.pop_request()

    def run_due(self, until: Callable[[], bool], timeout: float = 30.0) -> None:
        """Run scheduled tasks as they fall due until `until()` holds."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached; pending {self.scheduled}")
            now = time.monotonic()
            due = [t for t in self.scheduled if t[0] <= now]
            if not due:
                time.sleep(0.02)
                continue
            for task in sorted(due):
                self.scheduled.remove(task)
                self.run_task(task[1], *task[2])

    def count(self, name: str) -> int:
        return sum(1 for sent_name, _ in self.sent if sent_name == name)


@pytest.fixture
def dispatch() -> InlineDispatch:
    return InlineDispatch()


@pytest.fixture(scope="session")
def emulator() -> Iterator[Any]:
    """One fal emulator for the session (the real fal-client talks to it; one CA, so
    clients that cache their trust store stay valid)."""
    from devstack.fal_emulator import FalEmulator

    emu = FalEmulator(latency_seconds=0.2).start()
    saved = os.environ.get("SSL_CERT_FILE")
    # httpx (fal-client, result downloads, JWKS) and urllib trust the emulator's CA.
    os.environ["SSL_CERT_FILE"] = str(emu.ca_bundle_path)
    try:
        yield emu
    finally:
        if saved is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = saved
        emu.stop()


@pytest.fixture
def settings(pg_url: str, s3_endpoint: str, buckets: tuple[str, str], emulator: Any) -> Settings:
    emulator.reset(config=True)
    return make_settings(
        database_url=pg_url, s3_endpoint_url=s3_endpoint, uploads_bucket=buckets[0],
        processed_bucket=buckets[1], server_side_encryption="AES256", fal_key="test-key",
        fal_queue_host=f"127.0.0.1:{emulator.port}", fal_webhook_jwks_url=emulator.jwks_url,
        fal_media_hosts=f"127.0.0.1:{emulator.port}", fal_poll_seconds=0.1,
        fal_retry_base_seconds=0.05, fal_deadline_seconds=20, upload_wait_seconds=5)


@pytest.fixture
def live_api(app: Any, svc: Services) -> Iterator[str]:
    """The app on a real port, so the emulator can deliver webhooks to it."""
    import threading
    from dataclasses import replace

    from werkzeug.serving import WSGIRequestHandler, make_server

    from devstack.procs import free_port

    class Quiet(WSGIRequestHandler):
        # The test server's access log would print request lines with their query
        # (production's gunicorn logs paths only: api/gunicorn_conf.py).
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    svc.settings = replace(svc.settings, public_base_url=base)
    try:
        yield base
    finally:
        server.shutdown()


@pytest.fixture
def svc(settings: Settings, dispatch: InlineDispatch) -> Iterator[Services]:
    services = Services.from_settings(settings)
    services.dispatch = dispatch
    use_services(services)
    try:
        yield services
    finally:
        with services.engine.begin() as conn:
            conn.execute(text("TRUNCATE uploads, audit_events, try_ons, erasure_requests, "
                              "daily_quotas RESTART IDENTITY"))
        use_services(None)
        services.engine.dispose()


@pytest.fixture
def quotas(settings: Settings) -> QuotaService:
    return QuotaService(settings.redis_url, presign_daily=settings.presign_daily_quota,
                        user_rate=settings.user_rate, ip_rate=settings.ip_rate,
                        namespace=f"test-{uuid.uuid4().hex}")


@pytest.fixture
def app(settings: Settings, svc: Services, quotas: QuotaService):  # type: ignore[no-untyped-def]
    from api.app import create_app

    flask_app = create_app(settings, svc, quotas, configure_logs=False)
    flask_app.testing = True
    return flask_app


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def token() -> Callable[[str], str]:
    from shared.access.auth import issue_dev_token

    s = make_settings()
    return lambda user_id: issue_dev_token(s, user_id, 3600)


@pytest.fixture
def auth(token: Callable[[str], str]) -> Callable[..., dict[str, str]]:
    def headers(user_id: str = "alice", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(user_id)}", **extra}

    return headers


# --- logs ------------------------------------------------------------------

@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The JSON log stream exactly as operations would read it."""
    buffer = io.StringIO()
    root = logging.getLogger()
    handler, level = json_handler(buffer), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    quiet_noisy_loggers()  # as configure_logging does in every process
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def assert_error(response: Any, status: int, code: str, locale: str = "en") -> dict[str, Any]:
    """A Flask test response is our error envelope: status, code, localized message,
    the request's correlation id, and nothing secret in the body."""
    from shared.core.i18n import MESSAGES

    assert response.status_code == status, response.get_data(as_text=True)[:300]
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["messageKey"] == f"errors.{code}"
    assert error["message"] == MESSAGES[code][locale]
    assert error["correlationId"] == response.headers["X-Request-ID"]
    body = response.get_data(as_text=True)
    assert "X-Amz-" not in body and "Traceback" not in body and "hf-up-" not in body
    return dict(error)


def assert_no_secrets(logs: io.StringIO, caplog: pytest.LogCaptureFixture | None = None) -> None:
    """No signed URL (or any part of one) in the rendered logs, nor in the raw records."""
    rendered = logs.getvalue()
    for line in rendered.splitlines():
        json.loads(line)  # every line is JSON
    texts = [rendered]
    if caplog is not None:
        texts += [r.getMessage() for r in caplog.records]
    for chunk in texts:
        leak = SECRET_PATTERN.search(chunk)
        assert leak is None, f"a credential leaked into logs: {chunk[leak.start() - 80:leak.end() + 20]}"
