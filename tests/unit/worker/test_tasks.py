"""The worker's real Celery tasks (worker/tasks/), their bodies run in-process on
the harness services: each is one domain call, and its follow-ups go through
`Services.dispatch` with their countdowns."""

from __future__ import annotations

import pytest

import worker.tasks  # noqa: F401 - registers the tasks
from celeryconfig import task_routes
from shared.core import task_names as names
from shared.core.tasks import celery_app
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure
from shared.models import JobStatus, UploadStatus
from shared.privacy.erasure_requests import request_erasure
from shared.storage.base import StorageUnavailable
from shared.tryons import use_cases as tryons
from shared.uploads import use_cases as uploads
from tests.unit.harness import Harness
from worker.base import services, use_services

ALL_TASKS = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)
             and "." in v]


def test_every_task_name_is_registered_and_routed():
    assert len(ALL_TASKS) == len(names.QUEUES) == 14
    for name in ALL_TASKS:
        assert name in celery_app.tasks, name
        assert task_routes[name] == {"queue": names.QUEUES[name]}


def test_tasks_run_on_the_services_put_in_place(harness: Harness):
    assert services() is harness.svc
    use_services(None)
    try:
        assert celery_app.tasks[names.VALIDATE_UPLOAD].svc is not harness.svc
    finally:
        use_services(harness.svc)


def test_uploads_validate(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    uploads.confirm(harness.svc, "alice", issued.upload.key)
    assert harness.run_sent(names.VALIDATE_UPLOAD) == [UploadStatus.READY]
    assert harness.upload(issued.upload.id).status == UploadStatus.READY
    assert harness.dispatch.sent == []
    # A redelivery of the same message finds the work done.
    assert harness.run_task(names.VALIDATE_UPLOAD, issued.upload.id) == "skipped"


def test_uploads_validate_leaves_transient_failures_to_celery_s_retry(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    uploads.confirm(harness.svc, "alice", issued.upload.key)
    harness.storage.down = True
    with pytest.raises(StorageUnavailable):  # autoretry_for: re-raised when called directly
        harness.run_sent(names.VALIDATE_UPLOAD)
    assert harness.upload(issued.upload.id).status == UploadStatus.VALIDATING


def test_tryons_run_sends_its_follow_ups(harness: Harness):
    upload = harness.ready_upload()
    job = tryons.start(harness.svc, "alice", upload_id=upload.id, key=None, hairstyle_id="bob",
                       prompt=None, locale="en")
    request_id = harness.fal.accept()
    assert harness.run_sent(names.RUN_TRYON) == [1]  # follow-ups sent
    s = harness.svc.settings
    assert [(x.task, x.args, x.countdown) for x in harness.dispatch.sent] == [
        (names.POLL_TRYON, (job.id, 1), s.fal_poll_seconds)]
    assert harness.job(job.id).fal_request_id == request_id


def test_a_try_on_from_start_to_result_through_the_tasks(harness: Harness):
    upload = harness.ready_upload()
    job = tryons.start(harness.svc, "alice", upload_id=upload.id, key=None, hairstyle_id="bob",
                       prompt=None, locale="en")
    harness.fal.refuse(FalFailure("fal.unavailable", retriable=True, status=503))
    harness.run_sent(names.RUN_TRYON)
    [retry] = harness.dispatch.of(names.RUN_TRYON)
    assert retry.countdown and retry.countdown > 0
    harness.advance(retry.countdown)
    request_id = harness.fal.accept()
    harness.run_sent(names.RUN_TRYON)
    harness.fal.running(request_id)
    harness.run_sent(names.POLL_TRYON)
    assert [x.task for x in harness.dispatch.sent] == [names.POLL_TRYON]
    harness.fal.finish(request_id)
    harness.run_sent(names.POLL_TRYON)
    assert harness.job(job.id).status == JobStatus.SUCCEEDED
    assert harness.dispatch.sent == []


def test_tryons_complete_takes_a_webhook_s_report(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.fal.finish(request_id)
    reported = Completion(True, request_id).as_task_args()
    assert harness.run_task(names.COMPLETE_TRYON, job.id, 1, reported) == 0
    assert harness.job(job.id).status == JobStatus.SUCCEEDED


def test_the_beat_s_passes(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.advance(20)
    assert harness.run_task(names.RECONCILE_TRYONS) == 1
    assert [(x.task, x.args) for x in harness.dispatch.take()] == [
        (names.POLL_TRYON, (job.id, 1, False))]
    harness.svc.upload_store.put_bytes("sanitized/alice/00000000-0000-4000-8000-000000000000.jpg",
                                       b"x", content_type="image/jpeg")
    harness.advance(hours=1)
    assert harness.run_task(names.RECONCILE_TRYONS) == 1  # past its deadline
    assert [(x.task, x.args) for x in harness.dispatch.take()] == [
        (names.TRYON_DEADLINE, (job.id,))]
    assert harness.run_task(names.TRYON_DEADLINE, job.id) == 0  # failed: nothing more
    assert harness.job(job.id).error_code == "fal.timeout"
    assert harness.fal.canceled == [request_id]
    assert harness.run_task(names.REMOVE_ORPHANS) == 1
    assert harness.run_task(names.PURGE_RAW_UPLOADS) == 1
    harness.advance(hours=24)
    assert harness.run_task(names.UPLOAD_RETENTION) == 1  # the selfie's day is over
    harness.advance(days=8)
    assert harness.run_task(names.TRYON_RETENTION) == 1  # the failed job's week is over
    assert harness.job(job.id) is None
    assert harness.run_task(names.UPLOAD_RETENTION) == 1  # the deleted upload's row
    assert harness.run_task(names.REPAIR_RESULT_TAGS) == 0
    assert harness.run_task(names.RESEND_STALE_VALIDATIONS) == 0
    assert harness.objects() == set()


def test_users_erase_and_its_resume(harness: Harness):
    harness.ready_upload()
    request = request_erasure(harness.svc, "alice")
    harness.dispatch.take()  # the message is lost
    harness.advance(30)
    assert harness.run_task(names.RESUME_ERASURES) == 1
    assert harness.run_sent(names.ERASE_USER) == ["done"]
    assert harness.objects() == set()
    assert harness.run_task(names.ERASE_USER, request.id) == "done"  # a duplicate: no-op
