"""The real Celery worker (worker/app.py, worker/tasks.py) as operations runs it:
each prefork child starts with a hard address-space limit, so an image whose
decode needs more memory than that is rejected inside its task, and the worker
goes on serving. Real PostgreSQL, Redis (as broker) and LocalStack S3."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from PIL import Image

from devstack.procs import ManagedProcess, wait_until
from shared.models import Upload
from tests.conftest import REDIS_URL, fixture_bytes
from tests.integration.test_upload_flow import presign, put

REPO = Path(__file__).resolve().parents[2]
LIMIT_MB = 400
# A database of the machine's Redis of our own: the broker's queues are named by the app.
BROKER = REDIS_URL.rsplit("/", 1)[0] + "/12"


def big_flat_png() -> bytes:
    """38 megapixels (under the 40 MP cap, so it is decoded), 120 KB on disk: its
    decode and re-encode need more than LIMIT_MB of address space."""
    out = io.BytesIO()
    Image.new("RGB", (6200, 6200), (120, 80, 60)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def worker(settings, tmp_path) -> Iterator[ManagedProcess]:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": BROKER,
           "CELERY_BROKER_URL": BROKER, "S3_ENDPOINT_URL": settings.s3_endpoint_url,
           "S3_UPLOADS_BUCKET": settings.uploads_bucket,
           "S3_PROCESSED_BUCKET": settings.processed_bucket, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "JWT_DEV_SECRET": "x" * 40,
           "WORKER_MEMORY_LIMIT_MB": str(LIMIT_MB)}
    celery = str(Path(sys.executable).with_name("celery"))
    process = ManagedProcess([celery, "-A", "worker.app", "worker", "-P", "prefork", "-c", "1",
                              "-Q", "uploads", "-n", f"limits-{os.getpid()}@%h",
                              "--loglevel", "INFO"], tmp_path / "worker.log", env=env, cwd=REPO)
    process.start()
    try:
        assert wait_until(lambda: "ready." in process.log_tail(200), 60), process.log_tail()
        yield process
    finally:
        process.stop()


def child_pids(parent: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]


def send_validation(client, auth, dispatch, user: str, data: bytes, content_type: str) -> str:
    dispatch.run_inline = False  # the in-process stand-in for the broker stays out of it
    issued = presign(client, auth(user), data, content_type=content_type).get_json()
    assert put(issued, data).status_code == 200
    assert client.post("/v1/uploads/confirm", headers=auth(user),
                       json={"key": issued["key"]}).status_code == 202
    app = Celery("sender", broker=BROKER)
    app.send_task("uploads.validate", args=[issued["uploadId"]], queue="uploads")
    return issued["uploadId"]


def validated(svc, upload_id: str, timeout: float = 60) -> Upload:
    def done() -> bool:
        with svc.sessions() as session:
            return session.get(Upload, upload_id).status != "validating"

    assert wait_until(done, timeout, interval=0.2)
    with svc.sessions() as session:
        return session.get(Upload, upload_id)


def test_each_child_has_a_hard_memory_limit_that_stops_a_runaway_decode(
        client, auth, svc, dispatch, worker):
    (child,) = child_pids(worker.pid)
    limits = Path(f"/proc/{child}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    assert line.split()[3:5] == [str(LIMIT_MB * 1024 * 1024)] * 2  # soft and hard

    upload = validated(svc, send_validation(client, auth, dispatch, "gia", big_flat_png(),
                                            "image/png"))
    assert (upload.status, upload.rejection_code) == ("rejected", "upload.validation_failed")
    assert "memory limit reached" in worker.log_tail(400)
    # The same child goes on: an ordinary selfie passes under the same limit.
    upload = validated(svc, send_validation(client, auth, dispatch, "gia",
                                            fixture_bytes("astronaut.jpg"), "image/jpeg"))
    assert upload.status == "ready"
    assert child_pids(worker.pid) == [child]
