"""Starting a try-on (shared/tryons/use_cases.start): the row is committed, then
`tryons.run` is sent; what may not start, does not."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.core.errors import AppError
from shared.core.task_names import RUN_TRYON
from shared.models import DailyQuota, JobStatus
from shared.privacy.erasure_requests import request_erasure
from shared.tryons import use_cases as tryons
from shared.tryons.reconcile import QUEUED_GRACE, reconcile
from shared.tryons.retention import release_idempotency_keys
from shared.uploads import use_cases as uploads
from shared.uploads.validation import validate_upload
from tests.unit.harness import START, Harness


def start(harness: Harness, user: str = "alice", **kwargs):  # type: ignore[no-untyped-def]
    values = {"upload_id": None, "key": None, "hairstyle_id": "bob", "prompt": None,
              "locale": "en", **kwargs}
    return tryons.start(harness.svc, user, **values)


def code_of(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(AppError) as error:
        call()
    return error.value.code

def quota_used(harness: Harness, user: str, kind: str) -> int:
    """What the user's daily quota counter holds (0: never charged)."""
    with harness.svc.sessions() as session:
        row = session.get(DailyQuota, (user, kind))
    return row.used if row is not None else 0


def test_start_commits_the_job_then_sends_it(harness: Harness):
    upload = harness.ready_upload()
    job = start(harness, upload_id=upload.id, prompt="a little shorter", locale="es",
                daily_limit=5)
    row = harness.job(job.id)
    assert row is not None
    assert (row.status, row.user_id, row.upload_id, row.hairstyle_id, row.user_prompt,
            row.locale, row.attempt, row.due_at) == (
        JobStatus.QUEUED, "alice", upload.id, "bob", "a little shorter", "es", 0, START)
    assert [(s.task, s.args, s.countdown) for s in harness.dispatch.sent] == [
        (RUN_TRYON, (job.id,), None)]
    assert quota_used(harness, "alice", "tryon") == 1
    assert harness.audit(job.id) == ["tryon.created"]


def test_the_upload_may_be_named_by_key_and_may_still_be_validating(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    uploads.confirm(harness.svc, "alice", issued.upload.key)
    job = start(harness, key=issued.upload.key)
    assert job.upload_id == issued.upload.id


def test_what_may_not_start(harness: Harness):
    ready = harness.ready_upload("alice")
    pending, _ = harness.issue("alice", "coffee.jpg")
    rejected, data = harness.issue("alice", "chelsea.jpg", content_type="image/png")
    harness.put(rejected, data)
    uploads.confirm(harness.svc, "alice", rejected.upload.key)
    validate_upload(harness.svc, rejected.upload.id)
    deleted = harness.ready_upload("alice", "coffee.jpg")
    uploads.delete(harness.svc, "alice", deleted.id)
    harness.dispatch.take()
    for kwargs, code in (
            ({"upload_id": ready.id, "hairstyle_id": "mohawk"}, "tryon.unknown_hairstyle"),
            ({"upload_id": pending.upload.id}, "upload.not_ready"),
            ({"upload_id": rejected.upload.id}, "upload.rejected"),
            ({"upload_id": deleted.id}, "upload.not_found"),
            ({"upload_id": "not-a-uuid"}, "upload.not_found"),
            ({}, "request.invalid"),
            ({"key": "uploads/bob/x.jpg"}, "upload.forbidden_key"),
            ({"key": ready.key.replace("alice", "bob")}, "upload.forbidden_key")):
        assert code_of(lambda k=kwargs: start(harness, daily_limit=5, **k)
                       ) == code, kwargs
    assert code_of(lambda: start(harness, "bob", upload_id=ready.id)) == "upload.not_found"
    assert quota_used(harness, "alice", "tryon") == 0 and harness.dispatch.sent == []


def test_one_job_per_idempotency_key_for_a_day(harness: Harness):
    upload = harness.ready_upload()
    first = start(harness, upload_id=upload.id, idempotency_key="key-1")
    again = start(harness, upload_id=upload.id, idempotency_key="key-1")
    assert again.id == first.id
    assert harness.dispatch.names() == [RUN_TRYON]  # the replay sends nothing
    assert start(harness, "bob", upload_id=harness.ready_upload("bob").id,
                 idempotency_key="key-1").id != first.id  # keys are per user
    assert harness.job(first.id).idempotency_key != "key-1"  # stored hashed
    harness.advance(hours=24, seconds=1)
    assert release_idempotency_keys(harness.svc) == 2
    assert start(harness, upload_id=upload.id, idempotency_key="key-1").id != first.id


def test_start_is_refused_while_erasing(harness: Harness):
    upload = harness.ready_upload()
    request_erasure(harness.svc, "alice")
    harness.dispatch.take()
    assert code_of(lambda: start(harness, upload_id=upload.id, daily_limit=5)
                   ) == "user.erasure_in_progress"
    assert quota_used(harness, "alice", "tryon") == 0 and harness.dispatch.sent == []


def test_a_job_whose_message_was_lost_is_sent_by_the_reconciler(harness: Harness):
    upload = harness.ready_upload()
    harness.dispatch.broker_down = True
    job = start(harness, upload_id=upload.id)
    assert harness.job(job.id).status == JobStatus.QUEUED  # committed all the same
    harness.dispatch.broker_down = False
    assert reconcile(harness.svc) == []  # due now: its message may still be on the way
    harness.advance(QUEUED_GRACE + timedelta(seconds=1))
    follow = reconcile(harness.svc)
    assert [(f.task, f.args) for f in follow] == [(RUN_TRYON, (job.id,))]
    assert harness.job(job.id).due_at == harness.clock()
    assert reconcile(harness.svc) == []  # the re-send is waited for


def test_reads_are_the_owner_s_only(harness: Harness):
    job = harness.start_job("alice")
    harness.advance(1)
    newer = harness.start_job("alice")
    assert tryons.get(harness.svc, "alice", job.id).id == job.id
    assert code_of(lambda: tryons.get(harness.svc, "bob", job.id)) == "tryon.not_found"
    assert code_of(lambda: tryons.get(harness.svc, "alice", "x")) == "tryon.not_found"
    page = tryons.list_for_user(harness.svc, "alice", limit=1, cursor=None, status=None)
    assert [j.id for j in page.items] == [newer.id]
    rest = tryons.list_for_user(harness.svc, "alice", limit=5, cursor=page.next_cursor,
                                status=None)
    assert [j.id for j in rest.items] == [job.id]
    assert tryons.list_for_user(harness.svc, "alice", limit=5, cursor=None,
                                status="succeeded").items == []
    assert tryons.list_for_user(harness.svc, "bob", limit=5, cursor=None, status=None).items == []
    assert tryons.result_links(harness.svc, job) is None  # nothing to link yet
