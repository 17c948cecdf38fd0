"""Validation that survives a dead worker and a poison image: a lease and a crash
count per upload, one audit event however often it runs, and nothing written for
an upload deleted meanwhile. Real PostgreSQL and LocalStack S3; a worker "dies"
as a SIGKILL looks from the database (tests/faults kills real processes)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, make_url, select
from sqlalchemy.exc import OperationalError

from devstack.procs import wait_until
from shared.core.i18n import MESSAGES
from shared.models import AuditEvent, Upload
from shared.storage.base import ObjectMissing, StorageUnavailable
from shared.storage.keys import SANITIZED_PREFIX, sanitized_key
from shared.uploads import retention
from shared.uploads.validation import MAX_CRASHES, validate_upload
from tests.conftest import PG_ADMIN_URL, WorkerDied, fixture_bytes, shift_clock
from tests.integration.test_upload_flow import presign, put

ASTRONAUT = fixture_bytes("astronaut.jpg")



class Scanner:
    """A validation hook that dies, or does something, while the image is checked."""

    def __init__(self, action: Any = None) -> None:
        self.action, self.calls = action, 0

    def scan(self, data: bytes, image: Any) -> None:
        self.calls += 1
        if self.action is None:
            raise WorkerDied
        self.action()


def confirmed(client, auth, dispatch, user: str) -> str:
    """An upload confirmed, its validation message "in the queue"."""
    dispatch.run_inline = False
    issued = presign(client, auth(user), ASTRONAUT).get_json()
    assert put(issued, ASTRONAUT).status_code == 200
    assert client.post("/v1/uploads/confirm", headers=auth(user),
                       json={"key": issued["key"]}).status_code == 202
    dispatch.run_inline = True
    return issued["uploadId"]


def row(svc, upload_id: str) -> Upload:
    with svc.sessions() as session:
        return session.get(Upload, upload_id)


def events(svc, upload_id: str, action: str) -> int:
    with svc.sessions() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.subject_id == upload_id, AuditEvent.action == action))



def crash(svc, upload_id: str, owner: str) -> None:
    with pytest.raises(WorkerDied):
        validate_upload(svc, upload_id, owner=owner)


def test_a_redelivery_takes_over_at_once_and_a_live_lease_is_never_resent(
        client, auth, svc, dispatch):
    upload_id = confirmed(client, auth, dispatch, "ada")
    svc.scanners = [Scanner()]
    crash(svc, upload_id, owner="task-1")
    upload = row(svc, upload_id)
    assert (upload.status, upload.validation_owner, upload.validation_crashes) == \
        ("validating", "task-1", 1)
    assert retention.resend_stale_validations(svc) == 0  # the lease still runs
    taken_over = REGISTRY.get_sample_value("upload_validation_taken_over_total") or 0
    svc.scanners = []
    # The same message, delivered again after its worker died, takes over at once.
    assert validate_upload(svc, upload_id, owner="task-1").status == "ready"
    assert REGISTRY.get_sample_value("upload_validation_taken_over_total") == taken_over + 1
    upload = row(svc, upload_id)
    assert (upload.validation_owner, upload.validation_crashes) == (None, 0)
    assert events(svc, upload_id, "upload.validated") == 1


def test_a_worker_that_died_whole_is_replaced_when_its_lease_ends(client, auth, svc, dispatch):
    upload_id = confirmed(client, auth, dispatch, "bo")
    svc.scanners = [Scanner()]
    crash(svc, upload_id, owner="task-1")
    svc.scanners = []
    # Another delivery (a beat re-send) leaves a live lease alone...
    assert validate_upload(svc, upload_id, owner="task-2").status == "skipped"
    assert retention.resend_stale_validations(svc) == 0
    # ...and once it ended, the beat sends the validation again, which claims it.
    shift_clock(svc, 16)
    assert retention.resend_stale_validations(svc) == 1
    assert row(svc, upload_id).status == "ready"
    assert dispatch.count("uploads.validate") == 2  # at confirm, and the one re-send
    assert retention.resend_stale_validations(svc) == 0


def test_an_image_that_kills_its_worker_is_rejected_after_three_deliveries(
        client, auth, svc, dispatch):
    upload_id = confirmed(client, auth, dispatch, "cy")
    killer = svc.scanners = [Scanner()]
    for _ in range(MAX_CRASHES):
        crash(svc, upload_id, owner="task-1")  # reject_on_worker_lost redelivers it
    outcome = validate_upload(svc, upload_id, owner="task-1")
    assert (outcome.status, outcome.code) == ("rejected", "upload.validation_failed")
    assert killer[0].calls == MAX_CRASHES  # the fourth delivery did not open the image
    assert events(svc, upload_id, "upload.rejected") == 1
    for locale in ("en", "es"):
        body = client.get(f"/v1/uploads/{upload_id}?locale={locale}", headers=auth("cy")).get_json()
        assert body["status"] == "rejected"
        assert body["rejection"]["message"] == MESSAGES["upload.validation_failed"][locale]
    assert validate_upload(svc, upload_id, owner="task-9").status == "skipped"
    assert events(svc, upload_id, "upload.rejected") == 1


def test_a_failing_dependency_is_retried_and_not_counted_as_a_crash(client, auth, svc,
                                                                    dispatch):
    upload_id = confirmed(client, auth, dispatch, "di")
    real_get = svc.storage.get_bytes
    failures = {"left": MAX_CRASHES + 1}

    def flaky(*args: Any, **kwargs: Any) -> bytes:
        if failures["left"]:
            failures["left"] -= 1
            raise StorageUnavailable("503 SlowDown")
        return real_get(*args, **kwargs)

    svc.storage.get_bytes = flaky  # type: ignore[method-assign]
    for attempt in range(MAX_CRASHES + 1):  # the task's autoretry: same task id each time
        with pytest.raises(StorageUnavailable):
            validate_upload(svc, upload_id, owner="task-1")
        upload = row(svc, upload_id)
        assert (upload.validation_owner, upload.validation_crashes) == (None, 0), attempt
    assert validate_upload(svc, upload_id, owner="task-1").status == "ready"


def terminate_connections(database_url: str) -> int:
    """pg_terminate_backend on every connection to the test database (a restart, a
    failover, a proxy that drops idle and busy connections alike)."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()",
                            (make_url(database_url).database,)).fetchall()
    return sum(1 for (ok,) in rows if ok)


def test_storage_and_the_database_failing_while_it_finishes_are_not_crashes(
        client, auth, svc, dispatch, settings):
    # Each run gets as far as the finish: S3 refuses the sanitized copy three times
    # (as many as the crash limit), then the database drops every connection, the
    # one holding the row lock among them, between the copy and the row's update.
    upload_id = confirmed(client, auth, dispatch, "gus")
    real_put = svc.storage.put_bytes
    faults = ["s3"] * MAX_CRASHES + ["database"]
    dropped: list[int] = []

    def put_bytes(bucket: str, key: str, data: bytes, **kwargs: Any) -> None:
        if key.startswith(SANITIZED_PREFIX) and faults:
            if faults.pop(0) == "s3":
                raise StorageUnavailable("503 SlowDown")
            dropped.append(terminate_connections(settings.database_url))
        real_put(bucket, key, data, **kwargs)

    svc.storage.put_bytes = put_bytes  # type: ignore[method-assign]
    for attempt in range(MAX_CRASHES + 1):  # the task's retries: same id, attempt + 1
        error = StorageUnavailable if attempt < MAX_CRASHES else OperationalError
        with pytest.raises(error):
            validate_upload(svc, upload_id, owner="task-1", attempt=attempt)
        upload = row(svc, upload_id)
        assert (upload.status, upload.validation_owner, upload.validation_crashes) == (
            "validating", None, 0), attempt
    assert dropped and dropped[0] >= 1
    assert validate_upload(svc, upload_id, owner="task-1", attempt=MAX_CRASHES + 1).status \
        == "ready"
    upload = row(svc, upload_id)
    assert (upload.status, upload.validation_crashes) == ("ready", 0)
    assert events(svc, upload_id, "upload.validated") == 1
    svc.storage.head(settings.uploads_bucket, sanitized_key("gus", upload_id))


def test_concurrent_and_repeated_runs_write_one_outcome(client, auth, svc, dispatch, settings):
    upload_id = confirmed(client, auth, dispatch, "ed")
    barrier = threading.Barrier(2)
    svc.scanners = [Scanner(lambda: barrier.wait(timeout=10))]
    outcomes: list[str] = []

    def run(owner: str) -> None:
        outcomes.append(validate_upload(svc, upload_id, owner=owner).status)

    # Two runs at once: the first holds the claim, and its lease lapses (its
    # renewals failed, say) while it still works, so a second one claims too.
    threads = [threading.Thread(target=run, args=(f"task-{n}",)) for n in (1, 2)]
    threads[0].start()
    assert wait_until(lambda: row(svc, upload_id).validation_owner == "task-1", 10)
    shift_clock(svc, 16)
    threads[1].start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(outcomes) == ["ready", "skipped"]
    svc.scanners = []
    assert validate_upload(svc, upload_id, owner="task-3").status == "skipped"
    assert events(svc, upload_id, "upload.validated") == 1
    svc.storage.head(settings.uploads_bucket, sanitized_key("ed", upload_id))


def test_a_validation_that_finishes_after_its_upload_was_deleted_writes_nothing(
        client, auth, svc, dispatch, settings):
    upload_id = confirmed(client, auth, dispatch, "flo")
    svc.scanners = [Scanner(lambda: client.delete(f"/v1/uploads/{upload_id}",
                                                  headers=auth("flo")))]
    assert validate_upload(svc, upload_id, owner="task-1").status == "skipped"
    assert row(svc, upload_id).status == "deleted"
    with pytest.raises(ObjectMissing):
        svc.storage.head(settings.uploads_bucket, sanitized_key("flo", upload_id))
    assert events(svc, upload_id, "upload.validated") == 0
