"""A dependency that fails while a validation runs or finishes (storage, the
database) is retried and never counted as a crash; a real crash (the worker died,
an unexpected exception) still is. The crash count is taken at the claim and
given back when the run ends with a dependency failure, in any step: reading the
raw object, writing the sanitized copy or the placeholder, updating the row. The
runs here go through the worker's real task, with the task id and retry number
Celery gives a retry (tests/faults proves the same on real processes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.core import task_names as names
from shared.core.tasks import celery_app
from shared.models import Upload, UploadStatus
from shared.storage.base import StorageUnavailable
from shared.storage.keys import RAW_PREFIX, SANITIZED_PREFIX, sanitized_key
from shared.uploads import use_cases as uploads
from shared.uploads.validation import (
    DEPENDENCY_FAILURES,
    MAX_CRASHES,
    claim_name,
    is_dependency_failure,
    validate_upload,
)
from tests.conftest import WorkerDied
from tests.unit.harness import Harness
from worker.base import TRANSIENT

TASK_ID = "task-1"


def confirmed(harness: Harness, *, content_type: str | None = None) -> str:
    issued, data = harness.issue("alice", content_type=content_type)
    harness.put(issued, data)
    upload = uploads.confirm(harness.svc, "alice", issued.upload.key)
    harness.dispatch.take()
    return upload.id


def run_task(upload_id: str, retries: int) -> str:
    """The validation task as Celery runs its `retries`-th retry: the same task id."""
    task = celery_app.tasks[names.VALIDATE_UPLOAD]
    task.push_request(id=TASK_ID, retries=retries, headers={})
    try:
        return str(task.run(upload_id))
    finally:
        task.pop_request()


def crashes(harness: Harness, upload_id: str) -> tuple[str, str | None, int]:
    row = harness.upload(upload_id)
    return row.status, row.validation_owner, row.validation_crashes


def failing_writes(harness: Harness, times: int, prefix: str) -> list[str]:
    """Storage refuses the next `times` writes of keys under `prefix` (an S3 brownout
    that lets reads through); returns the keys it refused."""
    real_put = harness.storage.put_bytes
    refused: list[str] = []

    def put_bytes(bucket: str, key: str, data: bytes, **kwargs: Any) -> None:
        if key.startswith(prefix) and len(refused) < times:
            refused.append(key)
            raise StorageUnavailable("503 SlowDown")
        real_put(bucket, key, data, **kwargs)

    harness.storage.put_bytes = put_bytes  # type: ignore[method-assign]
    return refused


@contextmanager
def database_drops(harness: Harness, when: Callable[[str], bool]) -> Iterator[list[str]]:
    """Every statement `when` picks fails as one on a connection the server dropped."""
    dropped: list[str] = []

    def drop(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if when(statement):
            dropped.append(statement)
            raise OperationalError(statement, None, ConnectionResetError(
                "server closed the connection unexpectedly"))

    event.listen(harness.svc.engine, "before_cursor_execute", drop)
    try:
        yield dropped
    finally:
        event.remove(harness.svc.engine, "before_cursor_execute", drop)


def marks_ready(statement: str) -> bool:
    return statement.startswith("UPDATE uploads SET status")


def ends_the_run(statement: str) -> bool:
    """Marking it ready, or giving the claim back."""
    return marks_ready(statement) or "validation_crashes - " in statement


# --- storage -----------------------------------------------------------------------

def test_storage_errors_writing_the_sanitized_copy_are_retried_not_counted(harness: Harness):
    upload_id = confirmed(harness)
    refused = failing_writes(harness, MAX_CRASHES + 1, SANITIZED_PREFIX)
    for retry in range(MAX_CRASHES + 1):  # more failures than the crash limit
        with pytest.raises(StorageUnavailable):
            run_task(upload_id, retry)
        assert crashes(harness, upload_id) == (UploadStatus.VALIDATING, None, 0), retry
    assert len(refused) == MAX_CRASHES + 1
    # Storage is back: the next retry finishes it.
    assert run_task(upload_id, MAX_CRASHES + 1) == "ready"
    assert crashes(harness, upload_id) == (UploadStatus.READY, None, 0)
    assert sanitized_key("alice", upload_id) in harness.objects()
    assert harness.audit(upload_id).count("upload.validated") == 1


def test_storage_errors_writing_the_placeholder_keep_the_real_rejection(harness: Harness):
    upload_id = confirmed(harness, content_type="image/png")  # a JPEG declared as PNG
    failing_writes(harness, MAX_CRASHES + 1, RAW_PREFIX)
    for retry in range(MAX_CRASHES + 1):
        with pytest.raises(StorageUnavailable):
            run_task(upload_id, retry)
        assert crashes(harness, upload_id) == (UploadStatus.VALIDATING, None, 0), retry
    # Rejected for what the bytes are, not as a validation that kept crashing.
    assert run_task(upload_id, MAX_CRASHES + 1) == "rejected"
    assert harness.upload(upload_id).rejection_code == "upload.type_mismatch"


# --- the database ------------------------------------------------------------------

def test_a_dropped_connection_while_marking_ready_is_retried_not_counted(harness: Harness):
    upload_id = confirmed(harness)
    for retry in range(MAX_CRASHES + 1):
        with database_drops(harness, marks_ready) as dropped, pytest.raises(OperationalError):
            run_task(upload_id, retry)
        assert dropped, retry
        assert crashes(harness, upload_id) == (UploadStatus.VALIDATING, None, 0), retry
    assert run_task(upload_id, MAX_CRASHES + 1) == "ready"
    assert crashes(harness, upload_id) == (UploadStatus.READY, None, 0)


def test_a_database_down_while_giving_the_claim_back_is_still_not_counted(harness: Harness):
    # The finish fails and so does the give-back (the database is gone for both):
    # each retry of the message finds its earlier attempt's claim and takes over its
    # count instead of adding one.
    upload_id = confirmed(harness)
    for retry in range(MAX_CRASHES + 1):
        with database_drops(harness, ends_the_run), pytest.raises(OperationalError):
            run_task(upload_id, retry)
        assert crashes(harness, upload_id) == (
            UploadStatus.VALIDATING, claim_name(TASK_ID, retry), 1), retry
    assert run_task(upload_id, MAX_CRASHES + 1) == "ready"
    assert crashes(harness, upload_id) == (UploadStatus.READY, None, 0)


# --- real crashes still count ------------------------------------------------------

class Crashes:
    """A validation hook that kills the worker, or fails as a bug would."""

    name = "test-crash"

    def __init__(self, error: BaseException) -> None:
        self.error, self.calls = error, 0

    def scan(self, data: bytes, image: Any) -> None:
        self.calls += 1
        raise self.error


def test_a_redelivery_after_a_crash_counts_even_after_a_dependency_retry(harness: Harness):
    upload_id = confirmed(harness)
    failing_writes(harness, 1, SANITIZED_PREFIX)
    with pytest.raises(StorageUnavailable):
        run_task(upload_id, 0)  # a dependency failure: not counted
    killer = Crashes(WorkerDied())
    harness.svc.scanners = [killer]
    for n in range(1, MAX_CRASHES + 1):
        with pytest.raises(WorkerDied):
            run_task(upload_id, 1)  # the retry's message, redelivered after each death
        assert crashes(harness, upload_id) == (
            UploadStatus.VALIDATING, claim_name(TASK_ID, 1), n)
    assert run_task(upload_id, 1) == "rejected"
    assert killer.calls == MAX_CRASHES  # the last delivery did not open the image
    assert harness.upload(upload_id).rejection_code == "upload.validation_failed"


def test_an_unexpected_exception_counts_as_a_crash(harness: Harness):
    upload_id = confirmed(harness)
    bug = Crashes(KeyError("a bug"))
    harness.svc.scanners = [bug]
    for n in range(1, MAX_CRASHES + 1):
        with pytest.raises(KeyError):
            validate_upload(harness.svc, upload_id, owner=f"resent-{n}")  # the beat re-sends
        # The claim is given back (the beat re-sends when due), its count kept.
        assert crashes(harness, upload_id) == (UploadStatus.VALIDATING, None, n)
    assert validate_upload(harness.svc, upload_id).code == "upload.validation_failed"
    assert bug.calls == MAX_CRASHES


def test_a_claim_of_another_message_is_not_inherited(harness: Harness):
    # A claim that looks like a retry of another task id is that task's: left alone
    # while its lease runs, counted as a crash once it lapsed.
    upload_id = confirmed(harness)
    with harness.svc.sessions.begin() as session:
        session.execute(update(Upload).where(Upload.id == upload_id).values(
            validation_owner="task-10#1", validation_crashes=1,
            validation_lease_until=harness.clock() + timedelta(seconds=10)))
    assert run_task(upload_id, 2) == "skipped"
    harness.advance(11)
    failing_writes(harness, 1, SANITIZED_PREFIX)
    with pytest.raises(StorageUnavailable):
        run_task(upload_id, 2)
    assert crashes(harness, upload_id) == (UploadStatus.VALIDATING, None, 1)


# --- what counts as a dependency ---------------------------------------------------

def test_what_the_task_retries_is_never_counted_as_a_crash():
    assert all(issubclass(cls, DEPENDENCY_FAILURES) for cls in TRANSIENT)
    dropped = DBAPIError("SELECT 1", None, Exception("gone"), connection_invalidated=True)
    assert is_dependency_failure(dropped)
    assert not is_dependency_failure(DBAPIError("SELECT 1", None, Exception("syntax")))
    assert not is_dependency_failure(KeyError("a bug"))
