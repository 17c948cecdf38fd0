"""Erasure (DELETE /v1/me) end to end on the harness: every row and object of the
user goes, the audit trail and the request stay, others are untouched."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from shared.access.idempotency import fingerprint
from shared.core.errors import AppError
from shared.core.task_names import ERASE_USER
from shared.models import AuditEvent, ErasureRequest, ErasureStatus, TryOn, Upload
from shared.privacy import erasure
from shared.privacy.erasure_requests import RESEND_AFTER, read_erasure, request_erasure
from shared.privacy.orphans import remove_orphans
from shared.storage.base import StorageUnavailable
from shared.storage.keys import sanitized_key
from shared.uploads import use_cases as uploads
from tests.unit.harness import Harness


def remembered(harness: Harness, user: str) -> None:
    """An Idempotency-Key record, as POST /v1/try-ons leaves one."""
    store = harness.svc.idempotency
    body = fingerprint({"hairstyleId": "bob"})
    assert store.begin(user, f"key-of-{user}", body) is None
    store.complete(user, f"key-of-{user}", body, 202, {"jobId": "j"})


def everything_of(harness: Harness, user: str) -> tuple[int, list[str]]:
    with harness.svc.sessions() as session:
        rows = sum(session.scalar(select(func.count()).select_from(model).where(
            model.user_id == user)) or 0 for model in (Upload, TryOn))
    keys = [key for store, prefix in erasure.user_locations(harness.svc, user)
            for key, _ in store.list_keys(prefix)]
    return rows, keys


def a_user_with_everything(harness: Harness, user: str) -> dict[str, str]:
    done = harness.succeeded_job(user)
    in_flight, request_id, _ = harness.submitted_job(user)
    pending, _ = harness.issue(user, "coffee.jpg")
    # A validator that died after writing leaves an object its row never recorded.
    orphan = sanitized_key(user, "00000000-0000-4000-8000-000000000000")
    harness.svc.upload_store.put_bytes(orphan, b"jpeg", content_type="image/jpeg")
    remembered(harness, user)
    return {"done": done.id, "in_flight": in_flight.id, "request_id": request_id,
            "pending": pending.upload.id}


def test_erasure_leaves_nothing_of_the_user(harness: Harness):
    alice = a_user_with_everything(harness, "alice")
    bob = a_user_with_everything(harness, "bob")
    bob_before = everything_of(harness, "bob")
    assert everything_of(harness, "alice")[0] == 5  # 3 uploads, 2 jobs
    request = request_erasure(harness.svc, "alice")
    assert [(s.task, s.args) for s in harness.dispatch.take()] == [(ERASE_USER, (request.id,))]
    assert read_erasure(harness.svc, "alice").status == ErasureStatus.PENDING
    with pytest.raises(AppError) as refused:  # nothing new while it runs
        harness.issue("alice")
    assert refused.value.code == "user.erasure_in_progress"

    assert erasure.erase(harness.svc, request.id, owner="task-1") == ErasureStatus.DONE
    assert everything_of(harness, "alice") == (0, [])
    assert not list(harness.redis.scan_iter(match="hf:idem:alice:*"))
    assert harness.fal.canceled == [alice["request_id"]]  # the job in flight at fal
    row = read_erasure(harness.svc, "alice")
    assert (row.status, row.runs, row.lease_owner) == (ErasureStatus.DONE, 1, None)
    assert row.counts == {"try_ons": 2, "uploads": 3, "objects": 1, "idempotency_records": 1}
    # The trail stays: it names ids, never bytes or URLs.
    with harness.svc.sessions() as session:
        actions = list(session.scalars(select(AuditEvent.action).where(
            AuditEvent.user_id == "alice")))
    assert actions[-1] == "user.erased" and "tryon.deleted" in actions

    assert everything_of(harness, "bob") == bob_before  # nobody else's
    assert list(harness.redis.scan_iter(match="hf:idem:bob:*"))
    assert harness.job(bob["done"]) is not None
    harness.issue("alice")  # done: the user may start again


def test_a_second_request_returns_the_unfinished_one_and_reopens_a_finished_one(harness: Harness):
    first = request_erasure(harness.svc, "alice")
    assert request_erasure(harness.svc, "alice").id == first.id
    erasure.erase(harness.svc, first.id, owner="task-1")
    harness.advance(60)
    again = request_erasure(harness.svc, "alice")
    assert again.id == first.id and again.status == ErasureStatus.PENDING
    assert again.requested_at == harness.clock() and again.completed_at is None
    assert erasure.erase(harness.svc, first.id, owner="task-2") == ErasureStatus.DONE
    assert read_erasure(harness.svc, "alice").runs == 2
    with pytest.raises(AppError) as missing:
        read_erasure(harness.svc, "bob")
    assert missing.value.code == "erasure.not_found"


def test_a_failed_run_is_resumed_by_the_beat(harness: Harness):
    upload = harness.ready_upload()
    request = request_erasure(harness.svc, "alice")
    harness.dispatch.take()
    harness.storage.down = True
    with pytest.raises(StorageUnavailable):
        erasure.erase(harness.svc, request.id, owner="task-1")
    with harness.svc.sessions() as session:
        row = session.get(ErasureRequest, request.id)
    assert (row.status, row.lease_owner, row.last_error) == (
        ErasureStatus.RUNNING, None, "StorageUnavailable")
    assert harness.upload(upload.id) is not None  # the row stays until its objects went
    harness.storage.down = False
    assert erasure.resume_unfinished(harness.svc) == 0  # handed back: due after RESEND_AFTER
    harness.advance(RESEND_AFTER + timedelta(seconds=1))
    assert erasure.resume_unfinished(harness.svc) == 1
    [sent] = harness.dispatch.take()
    assert (sent.task, sent.args) == (ERASE_USER, (request.id,))
    assert harness.run_task(ERASE_USER, request.id) == ErasureStatus.DONE  # the real task
    assert everything_of(harness, "alice") == (0, [])
    assert erasure.resume_unfinished(harness.svc) == 0


def test_a_run_holding_the_lease_is_not_doubled(harness: Harness):
    request = request_erasure(harness.svc, "alice")
    with harness.svc.sessions.begin() as session:
        row = session.get(ErasureRequest, request.id)
        row.status, row.lease_owner = ErasureStatus.RUNNING, "task-1"
        row.lease_until = harness.clock() + erasure.LEASE
    assert erasure.erase(harness.svc, request.id, owner="task-2") == ErasureStatus.RUNNING
    assert erasure.resume_unfinished(harness.svc) == 0
    assert erasure.erase(harness.svc, "00000000-0000-4000-8000-000000000000",
                         owner="task-2") == "unknown"


def test_a_late_put_through_an_old_url_is_swept(harness: Harness):
    issued, data = harness.issue()
    request = request_erasure(harness.svc, "alice")
    erasure.erase(harness.svc, request.id, owner="task-1")
    # The URL was issued before the erasure and still lives.
    harness.put(issued, data)
    assert everything_of(harness, "alice") == (0, [issued.upload.key])
    harness.advance(harness.svc.settings.presign_ttl_seconds
                    + harness.svc.settings.raw_purge_margin_seconds + 1)
    assert remove_orphans(harness.svc) == 1
    assert everything_of(harness, "alice") == (0, [])
    assert uploads.list_for_user(harness.svc, "alice", limit=5, cursor=None,
                                 status=None).items == []
