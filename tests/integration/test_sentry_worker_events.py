"""Sentry, proven end to end (issue 16): the SDK's real envelopes reach a local Sentry
(tests/sentry_inbox.py) from a real Celery worker process, on the prefork pool and on
the threads pool (which never sends worker_process_init), and from the API.

A task that fails for good (a non-retried error, and one whose retries run out) and
a failing request each produce exactly one event, tagged with the correlation id the
work carried, with no signed URL, token, Authorization header, request body, database
password or fal media link in it. Real Redis as the broker; the worker's database is
down on purpose (that is what exhausts the retries), so no other server is needed
for the worker half."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from devstack.procs import ManagedProcess, wait_until
from shared.core import task_names as names
from shared.core.observability import reset_correlation_id, set_correlation_id
from tests.conftest import REDIS_URL
from tests.integration.sentry_worker_app import MAX_RETRIES
from tests.integration.test_upload_flow import presign, sha256_b64
from tests.sentry_inbox import SentryInbox, sentry_in_this_process

REPO = Path(__file__).resolve().parents[2]
# A database of the machine's Redis of our own (test_worker_processes.py has 12).
BROKER = REDIS_URL.rsplit("/", 1)[0] + "/11"
QUEUE = names.QUEUES[names.COMPLETE_TRYON]

SIGNATURE = secrets.token_hex(32)
SIGNED_URL = ("https://uploads.s3.amazonaws.com/u/zara/selfie.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
              "&X-Amz-Credential=AKIAEXAMPLE%2F20261203%2Fus-east-1%2Fs3%2Faws4_request"
              f"&X-Amz-Signature={SIGNATURE}")
FAL_MEDIA_PATH = f"/files/zebra/{secrets.token_hex(12)}.png"
FAL_MEDIA_URL = f"https://v3.fal.media{FAL_MEDIA_PATH}"
TOKEN = f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ6YXJhIn0.{secrets.token_hex(16)}"
DB_PASSWORD = f"db-{secrets.token_hex(8)}"
SECRETS = (SIGNATURE, FAL_MEDIA_PATH, TOKEN, DB_PASSWORD)
MEMORY_LIMIT_MB = 3000


def address_space_limit(pid: int) -> str:
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return next(line for line in limits if line.startswith("Max address space")).split()[3]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_nothing_secret(events: list[dict[str, Any]], *more: str) -> None:
    text = json.dumps(events)
    for secret in (*SECRETS, *more):
        assert secret not in text, f"a secret ({secret[:6]}…) in a Sentry event"
    for event in events:
        request = event.get("request") or {}
        assert "data" not in request, "a request body in a Sentry event"
        assert not {str(h).lower() for h in request.get("headers") or {}} & {
            "authorization", "cookie"}, "a credential header in a Sentry event"


@pytest.fixture
def inbox() -> Iterator[SentryInbox]:
    inbox = SentryInbox()
    try:
        yield inbox
    finally:
        inbox.server.shutdown()
        inbox.server.server_close()


@pytest.fixture
def sender() -> Iterator[Celery]:
    app = Celery("sentry-test-sender", broker=BROKER)
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(QUEUE)  # nothing left by an earlier run
    yield app
    app.close()


@pytest.fixture(params=["prefork", "threads"])
def worker(request: pytest.FixtureRequest, inbox: SentryInbox, sender: Celery,
           tmp_path: Path) -> Iterator[ManagedProcess]:
    pool = request.param
    env = {**os.environ, "HAIRFLUENCER_ENV": "development", "SENTRY_DSN": inbox.dsn,
           "CELERY_BROKER_URL": BROKER, "REDIS_URL": BROKER,
           # Down for longer than the retries last: nothing listens there.
           "DATABASE_URL": f"postgresql+psycopg://hf:{DB_PASSWORD}@127.0.0.1:{closed_port()}/hf",
           "S3_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "JWT_DEV_SECRET": "x" * 40, "LOG_LEVEL": "INFO",
           "WORKER_MEMORY_LIMIT_MB": str(MEMORY_LIMIT_MB)}
    celery = str(Path(sys.executable).with_name("celery"))
    process = ManagedProcess(
        [celery, "-A", "tests.integration.sentry_worker_app", "worker", "-P", pool,
         "-c", "1" if pool == "prefork" else "4", "-Q", QUEUE,
         "-n", f"sentry-{pool}-{os.getpid()}@%h", "--without-mingle", "--without-gossip",
         "--loglevel", "INFO"], tmp_path / "worker.log", env=env, cwd=REPO, name=pool)
    process.start()
    try:
        assert wait_until(lambda: "ready." in process.log_tail(200), 60), process.log_tail()
        yield process
    finally:
        process.stop()


def send_as(sender: Celery, correlation_id: str, task: str, *args: Any) -> str:
    """Send as the API or a task does: the correlation id in effect is stamped on the
    message's headers by shared.core.tasks' before_task_publish handler."""
    token = set_correlation_id(correlation_id)
    try:
        return str(sender.send_task(task, args=list(args), queue=names.QUEUES[task]).id)
    finally:
        reset_correlation_id(token)


def test_a_task_that_fails_for_good_sends_one_event_with_its_correlation_id(
        worker: ManagedProcess, inbox: SentryInbox, sender: Celery) -> None:
    job_id = "0b8c5a57-6c1e-4a41-9d0f-0d1f2e3a4b5c"
    # (a) Not retried: a completion this version cannot read (a key it does not know),
    # carrying what a message must never leak.
    broken_id = "corr-broken-" + secrets.token_hex(6)
    broken = send_as(sender, broken_id, names.COMPLETE_TRYON, job_id, 1,
                     {"ok": True, "request_id": "req-1", "image_urls": [FAL_MEDIA_URL],
                      "result_url": SIGNED_URL, "webhook_token": TOKEN})
    # (b) Retried, MAX_RETRIES times, and given up: the database is down throughout.
    exhausted_id = "corr-exhausted-" + secrets.token_hex(6)
    exhausted = send_as(sender, exhausted_id, names.COMPLETE_TRYON, job_id, 1,
                        {"ok": True, "request_id": "req-2", "image_urls": [FAL_MEDIA_URL],
                         "error_type": None})

    broken_events = inbox.wait_for(lambda: inbox.events_tagged(broken_id), timeout=30)
    exhausted_events = inbox.wait_for(lambda: inbox.events_tagged(exhausted_id), timeout=30)
    # The address-space limit binds prefork children only (worker/app.py says why).
    assert worker.pid is not None
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert address_space_limit(worker.pid) == "unlimited"
    expected = str(MEMORY_LIMIT_MB * 1024 * 1024) if worker.name == "prefork" else None
    assert [address_space_limit(int(child)) for child in children] == (
        [expected] if expected else [])
    log = worker.log_path.read_text()
    assert len(broken_events) == 1, log
    assert len(exhausted_events) == 1, log
    # ...and nothing else: every event the worker sent is one of these two.
    assert len(inbox.events()) == 2, [e.get("tags") for e in inbox.events()]

    (event,) = broken_events
    assert event["tags"]["celery_task_id"] == broken
    assert event["exception"]["values"][-1]["type"] == "TypeError"
    assert f"[{broken}] retry:" not in log
    (event,) = exhausted_events
    assert event["tags"]["celery_task_id"] == exhausted
    assert event["exception"]["values"][-1]["type"] == "OperationalError"
    assert log.count(f"[{exhausted}] retry:") == MAX_RETRIES, log
    # Celery's own lines on the failure and on each retry carry the id too.
    for task_id, correlation_id in ((broken, broken_id), (exhausted, exhausted_id)):
        lines = [json.loads(line) for line in log.splitlines()
                 if f"[{task_id}] raised" in line or f"[{task_id}] retry:" in line]
        assert {line["correlation_id"] for line in lines} == {correlation_id}, lines
    assert_nothing_secret(broken_events + exhausted_events)


def test_a_failing_request_sends_one_event_with_its_correlation_id(
        client: Any, auth: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sentry_sdk

    inbox = sentry_in_this_process()
    correlation_id = "corr-api-" + secrets.token_hex(6)
    headers = {**auth("nora"), "X-Request-ID": correlation_id}
    bearer = headers["Authorization"].split()[1]
    data = secrets.token_bytes(2048)  # its checksum is in the request body

    def explode(*_: Any, **__: Any) -> None:
        raise RuntimeError(f"presign broke after signing {SIGNED_URL} for {FAL_MEDIA_URL} "
                           f"with Bearer {bearer}")

    monkeypatch.setattr("shared.uploads.use_cases.presign", explode)
    response = presign(client, headers, data)
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == correlation_id
    sentry_sdk.flush(timeout=5)

    events = inbox.wait_for(lambda: inbox.events_tagged(correlation_id), timeout=10)
    assert len(events) == 1, [e.get("tags") for e in inbox.events()]
    (event,) = events
    assert "presign broke" in json.dumps(event["exception"])
    assert event["request"]["url"].endswith("/v1/uploads/presign")
    assert_nothing_secret(events, bearer, sha256_b64(data))
