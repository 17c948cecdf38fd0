"""Running a try-on (shared/tryons/submission.py) against the scripted fal: one
submission per claim, and what each answer of fal makes of the job."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import update

from shared.core.task_names import POLL_TRYON, RUN_TRYON
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure
from shared.fal.webhooks import job_token
from shared.models import JobStatus, TryOn, Upload, UploadStatus
from shared.storage.keys import result_keys
from shared.tryons import completion, submission
from shared.tryons.hairstyles import catalogue
from shared.tryons.submission import MAX_ATTEMPTS, UPLOAD_WAIT_STEP_SECONDS
from shared.uploads import use_cases as uploads
from tests.unit.harness import START, Harness

UNAVAILABLE = FalFailure("fal.unavailable", retriable=True, status=503)


def use_webhooks(harness: Harness) -> None:
    harness.svc.settings = replace(harness.svc.settings, public_base_url="https://api.example.com")


def test_an_accepted_submission_puts_the_job_in_processing(harness: Harness):
    job = harness.start_job(prompt="with\x07 bangs")
    request_id = harness.fal.accept()
    follow = submission.run(harness.svc, job.id)
    s = harness.svc.settings
    row = harness.job(job.id)
    assert (row.status, row.attempt, row.fal_request_id, row.fal_failures) == (
        JobStatus.PROCESSING, 1, request_id, 0)
    assert row.first_submitted_at == START
    assert row.deadline_at == START + timedelta(seconds=s.fal_deadline_seconds)
    assert row.due_at == START + submission.SILENT_AFTER  # asked about if no news comes
    upload = harness.upload(job.upload_id)
    assert row.source_sha256 == upload.sanitized_sha256
    # Without webhooks, fal is polled; the reconciler keeps the deadline either way.
    assert [(f.task, f.args, f.countdown) for f in follow] == [
        (POLL_TRYON, (job.id, 1), s.fal_poll_seconds)]
    [sent] = harness.fal.submissions
    assert sent.webhook_url is None
    assert sent.arguments["prompt"].startswith(catalogue()["bob"].prompt)
    assert sent.arguments["prompt"].endswith("(hair only): with  bangs")  # control chars gone
    assert sent.arguments["num_images"] == 1 and sent.arguments["limit_generations"] is True
    # A fresh signed link to the sanitized copy, never the raw upload.
    [link] = sent.arguments["image_urls"]
    assert link.startswith(f"memory://{s.uploads_bucket}/{upload.sanitized_key}?")
    assert 2 <= sent.start_timeout <= s.fal_deadline_seconds
    assert harness.audit(job.id) == ["tryon.created", "tryon.invoked"]


def test_with_webhooks_the_url_names_job_and_attempt_and_nothing_is_polled(harness: Harness):
    use_webhooks(harness)
    job = harness.start_job()
    harness.fal.accept()
    follow = submission.run(harness.svc, job.id)
    assert follow == []
    url = harness.fal.submissions[0].webhook_url
    assert url is not None and url.startswith("https://api.example.com/v1/webhooks/fal?")
    query = parse_qs(urlsplit(url).query)
    assert query["job"] == [job.id] and query["attempt"] == ["1"]
    assert query["token"] == [job_token(harness.svc.settings.webhook_secret, job.id, 1)]


def test_a_submitted_job_is_not_submitted_again(harness: Harness):
    job, _, _ = harness.submitted_job()
    assert submission.run(harness.svc, job.id) == []  # no second submit was scripted
    assert len(harness.fal.submissions) == 1


def test_a_retriable_failure_requeues_the_job_with_backoff(harness: Harness):
    job = harness.start_job()
    harness.fal.refuse(UNAVAILABLE)
    [retry] = submission.run(harness.svc, job.id)
    base = harness.svc.settings.fal_retry_base_seconds
    assert retry.task == RUN_TRYON and retry.args == (job.id,)
    assert 2 * base * 0.75 <= retry.countdown <= 2 * base * 1.25  # 2^1 × base, jittered
    row = harness.job(job.id)
    assert (row.status, row.fal_failures, row.fal_request_id, row.attempt) == (
        JobStatus.QUEUED, 1, None, 1)
    assert row.due_at == START + timedelta(seconds=retry.countdown)
    # Delivered early: it waits for its due time without asking fal.
    [wait] = submission.run(harness.svc, job.id)
    assert wait.task == RUN_TRYON and wait.countdown == pytest.approx(retry.countdown)
    assert len(harness.fal.submissions) == 1
    harness.advance(retry.countdown)
    request_id = harness.fal.accept()
    submission.run(harness.svc, job.id)
    row = harness.job(job.id)
    assert (row.status, row.attempt, row.fal_request_id) == (JobStatus.PROCESSING, 2, request_id)
    # Every attempt gets a fresh link.
    assert len({s.arguments["image_urls"][0] for s in harness.fal.submissions}) == 2


def test_retriable_failures_beyond_the_budget_fail_the_job(harness: Harness):
    job = harness.start_job()
    for _ in range(harness.svc.settings.fal_max_retries):
        harness.fal.refuse(UNAVAILABLE)
        [retry] = submission.run(harness.svc, job.id)
        harness.advance(retry.countdown)
    harness.fal.refuse(FalFailure("fal.rate_limited", retriable=True, status=429))
    assert submission.run(harness.svc, job.id) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code, row.fal_failures) == (
        JobStatus.FAILED, "fal.rate_limited", harness.svc.settings.fal_max_retries)
    assert harness.audit(job.id)[-1] == "tryon.failed"


def test_a_final_failure_fails_the_job_at_once(harness: Harness):
    job = harness.start_job()
    # A finalizer that died could have left objects: failing removes them.
    for key in result_keys("alice", job.id):
        harness.svc.result_store.put_bytes(key, b"partial", content_type="image/jpeg")
    harness.fal.refuse(FalFailure("fal.content_policy", retriable=False, status=422,
                                  error_type="content_policy_violation"))
    assert submission.run(harness.svc, job.id) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code, row.completed_at, row.due_at) == (
        JobStatus.FAILED, "fal.content_policy", START, None)
    assert row.delete_after == START + timedelta(days=harness.svc.settings.result_retention_days)
    assert harness.objects(harness.svc.settings.processed_bucket) == set()
    assert submission.run(harness.svc, job.id) == []  # a failed job is left alone


def test_in_doubt_with_webhooks_waits_for_the_webhook_then_submits_again(harness: Harness):
    use_webhooks(harness)
    job = harness.start_job()
    harness.fal.refuse(FalFailure("fal.unavailable", retriable=True, in_doubt=True))
    [wait] = submission.run(harness.svc, job.id)
    lease = harness.svc.settings.fal_in_doubt_seconds
    assert (wait.task, wait.countdown) == (RUN_TRYON, lease + 0.5)
    row = harness.job(job.id)
    # fal may have accepted it: no failure counted, the claim holds until its lease ends.
    assert (row.status, row.attempt, row.fal_request_id, row.fal_failures) == (
        JobStatus.PROCESSING, 1, None, 0)
    assert row.due_at == START + timedelta(seconds=lease)
    harness.advance(lease / 2)
    [again] = submission.run(harness.svc, job.id)  # a redelivery while the lease runs
    assert again.task == RUN_TRYON and len(harness.fal.submissions) == 1
    harness.advance(lease / 2)
    request_id = harness.fal.accept()
    submission.run(harness.svc, job.id)  # taken over: attempt 2
    row = harness.job(job.id)
    assert (row.attempt, row.fal_request_id) == (2, request_id)
    # After all, attempt 1 had been accepted and its webhook now reports success: the
    # result is taken, and attempt 2 is no longer needed.
    url = harness.fal.finish("req-of-attempt-1")
    assert completion.complete(harness.svc, job.id, 1, Completion(
        True, "req-of-attempt-1", image_urls=(url,))) == []
    row = harness.job(job.id)
    assert (row.status, row.fal_request_id) == (JobStatus.SUCCEEDED, "req-of-attempt-1")
    assert harness.fal.canceled == [request_id]


def test_in_doubt_without_webhooks_counts_as_a_failure(harness: Harness):
    job = harness.start_job()
    harness.fal.refuse(FalFailure("fal.unavailable", retriable=True, in_doubt=True))
    [retry] = submission.run(harness.svc, job.id)
    assert retry.task == RUN_TRYON
    row = harness.job(job.id)
    assert (row.status, row.fal_failures) == (JobStatus.QUEUED, 1)


def test_a_job_waits_for_its_upload_then_gives_up(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    upload = uploads.confirm(harness.svc, "alice", issued.upload.key)
    job = harness.start_job(upload=upload)
    [wait] = submission.run(harness.svc, job.id)
    assert (wait.task, wait.countdown) == (RUN_TRYON, UPLOAD_WAIT_STEP_SECONDS)
    assert harness.job(job.id).status == JobStatus.QUEUED and not harness.fal.submissions
    harness.advance(harness.svc.settings.upload_wait_seconds)
    assert submission.run(harness.svc, job.id) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code) == (JobStatus.FAILED, "upload.not_ready")


@pytest.mark.parametrize(("status", "code"), [(UploadStatus.DELETED, "upload.not_found"),
                                              (UploadStatus.REJECTED, "upload.rejected")])
def test_a_job_whose_upload_went_fails(harness: Harness, status: str, code: str):
    job = harness.start_job()
    with harness.svc.sessions.begin() as session:
        session.execute(update(Upload).where(Upload.id == job.upload_id).values(status=status))
    assert submission.run(harness.svc, job.id) == []
    assert harness.job(job.id).error_code == code


def test_a_job_that_keeps_losing_its_claims_fails(harness: Harness):
    job = harness.start_job()
    with harness.svc.sessions.begin() as session:
        session.execute(update(TryOn).where(TryOn.id == job.id).values(attempt=MAX_ATTEMPTS))
    assert submission.run(harness.svc, job.id) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code) == (JobStatus.FAILED, "fal.unavailable")
    assert not harness.fal.submissions


def test_a_submission_accepted_after_its_claim_moved_on_is_canceled(harness: Harness):
    job = harness.start_job()
    request_id = "req-late"

    def submit_while_taken_over(arguments, webhook_url, *, start_timeout):  # type: ignore[no-untyped-def]
        # While this submit was in flight, the lease lapsed and a second run claimed.
        with harness.svc.sessions.begin() as session:
            session.execute(update(TryOn).where(TryOn.id == job.id).values(attempt=2))
        return request_id

    harness.fal.submit = submit_while_taken_over  # type: ignore[method-assign]
    assert submission.run(harness.svc, job.id) == []
    assert harness.fal.canceled == [request_id]
    assert harness.job(job.id).fal_request_id is None
