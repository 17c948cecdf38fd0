"""Late completions (shared/tryons/completion.py): a success fal reports for an
attempt that is not the submission in flight. A result fal produced was paid for:
while the job is in flight it is used (in retry backoff too, so the pending retry
submits nothing), and every submission fal ran beside the one whose result the job
used is counted once in fal_double_submissions_total, whichever state the job was
in when the late result came (docs/reliability.md, "Late completions")."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import REGISTRY

from shared.core.task_names import COMPLETE_TRYON, RUN_TRYON
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure, classify_http
from shared.models import JobStatus
from shared.tryons import completion, submission
from shared.tryons.removal import erase_job
from tests.unit.harness import Harness

CAUSES = ("no_webhook", "lease_lapsed", "superseded_finished", "superseded_in_backoff",
          "superseded_after_success")
LOST = "req-of-attempt-1"  # attempt 1's request: fal accepted it, its answer was lost


def doubles() -> dict[str, float]:
    return {cause: REGISTRY.get_sample_value("fal_double_submissions_total",
                                             {"cause": cause}) or 0.0 for cause in CAUSES}


def counted(before: dict[str, float]) -> dict[str, float]:
    """What fal_double_submissions_total gained since `before`, by cause."""
    return {cause: n - before[cause] for cause, n in doubles().items() if n != before[cause]}


def use_webhooks(harness: Harness) -> None:
    harness.svc.settings = replace(harness.svc.settings, public_base_url="https://api.example.com")


def webhook(harness: Harness, job_id: str, attempt: int, reported: Completion) -> None:
    """fal's webhook for `attempt`, handled by the worker's real task (the route only
    verifies it and sends this task)."""
    harness.run_task(COMPLETE_TRYON, job_id, attempt, reported.as_task_args())


def taken_over(harness: Harness) -> tuple[str, str]:
    """A job whose attempt 1 was in doubt (fal accepted it as LOST, the answer was
    lost) and was taken over after its lease: attempt 2 is at fal. (job id, request 2)"""
    use_webhooks(harness)
    job = harness.start_job()
    harness.fal.refuse(FalFailure("fal.unavailable", retriable=True, in_doubt=True))
    submission.run(harness.svc, job.id)
    harness.advance(harness.svc.settings.fal_in_doubt_seconds)
    second = harness.fal.accept()
    submission.run(harness.svc, job.id)
    row = harness.job(job.id)
    assert (row.status, row.attempt, row.fal_request_id) == (JobStatus.PROCESSING, 2, second)
    harness.dispatch.take()
    return job.id, second


def in_backoff(harness: Harness, job_id: str, attempt: int, request_id: str) -> None:
    """fal reports a retriable failure of `attempt`: the job waits for its retry."""
    webhook(harness, job_id, attempt, Completion(False, request_id,
                                                 error_type="runner_disconnected"))
    row = harness.job(job_id)
    assert (row.status, row.attempt, row.fal_request_id) == (JobStatus.QUEUED, attempt, None)
    assert row.due_at is not None and row.due_at > harness.clock()
    [retry] = harness.dispatch.of(RUN_TRYON)
    assert retry.countdown and retry.countdown > 0


def retry_submits_nothing(harness: Harness, submitted: int) -> None:
    """The retry backoff scheduled finds the job finished: fal would accept a
    submission (scripted), but none is made."""
    harness.fal.accept()
    harness.advance(harness.svc.settings.fal_retry_base_seconds * 10)
    harness.run_sent(RUN_TRYON)
    assert len(harness.fal.submissions) == submitted


def test_the_failed_attempts_own_success_in_backoff_is_used(harness: Harness):
    use_webhooks(harness)
    before = doubles()
    job, first, _ = harness.submitted_job()
    harness.dispatch.take()
    in_backoff(harness, job.id, 1, first)
    # fal reports the same request a success after all: that result is the job's.
    harness.fal.finish(first)
    webhook(harness, job.id, 1, Completion(True, first))
    row = harness.job(job.id)
    assert (row.status, row.attempt, row.fal_request_id, row.due_at) == (
        JobStatus.SUCCEEDED, 1, first, None)
    assert row.result_key and row.result_key in harness.objects()
    retry_submits_nothing(harness, 1)
    assert harness.job(job.id).status == JobStatus.SUCCEEDED
    assert counted(before) == {}  # one request, one result: no double
    assert harness.audit(job.id).count("tryon.succeeded") == 1


def test_an_earlier_attempts_success_in_backoff_is_used_and_counted(harness: Harness):
    """The finding: attempt 1 presumed lost, attempt 2 failed and waits for its retry,
    then attempt 1's success arrives. It was dropped and a third submission paid."""
    before = doubles()
    job_id, second = taken_over(harness)
    in_backoff(harness, job_id, 2, second)
    harness.fal.finish(LOST)
    webhook(harness, job_id, 1, Completion(True, LOST))
    row = harness.job(job_id)
    assert (row.status, row.attempt, row.fal_request_id) == (JobStatus.SUCCEEDED, 2, LOST)
    assert harness.fal.result_reads == [LOST]
    retry_submits_nothing(harness, 2)
    # Attempt 2 was sent while attempt 1 ran at fal: one double, counted once.
    assert counted(before) == {"superseded_in_backoff": 1}
    assert harness.fal.canceled == []  # nothing of attempt 2 is left at fal
    # A duplicate delivery of the result used changes and counts nothing.
    webhook(harness, job_id, 1, Completion(True, LOST))
    assert counted(before) == {"superseded_in_backoff": 1}
    assert harness.audit(job_id).count("tryon.succeeded") == 1
    assert "tryon.result_unused" not in harness.audit(job_id)


def test_an_earlier_attempts_failure_in_backoff_changes_nothing(harness: Harness):
    job_id, second = taken_over(harness)
    in_backoff(harness, job_id, 2, second)
    harness.dispatch.take()
    before = harness.job(job_id)
    webhook(harness, job_id, 1, Completion(False, LOST, error_type="runner_disconnected"))
    webhook(harness, job_id, 2, Completion(False, second, error_type="runner_disconnected"))
    row = harness.job(job_id)
    assert (row.status, row.attempt, row.fal_failures, row.due_at) == (
        JobStatus.QUEUED, 2, before.fal_failures, before.due_at)
    assert harness.dispatch.of(RUN_TRYON) == []  # no second retry scheduled


def test_while_a_later_attempt_is_at_fal_the_earlier_result_wins_once(harness: Harness):
    before = doubles()
    job_id, second = taken_over(harness)
    harness.fal.finish(LOST)
    webhook(harness, job_id, 1, Completion(True, LOST))
    row = harness.job(job_id)
    assert (row.status, row.fal_request_id) == (JobStatus.SUCCEEDED, LOST)
    assert harness.fal.canceled == [second]
    assert counted(before) == {"superseded_finished": 1}
    # The cancel came too late: attempt 2 finishes too. That double was counted when
    # attempt 1 won; its result is set aside (audited once), not counted again.
    harness.fal.finish(second)
    webhook(harness, job_id, 2, Completion(True, second))
    webhook(harness, job_id, 2, Completion(True, second))
    assert counted(before) == {"superseded_finished": 1}
    assert harness.job(job_id).fal_request_id == LOST
    assert harness.audit(job_id).count("tryon.result_unused") == 1
    assert harness.fal.result_reads == [LOST]  # a result not used is not fetched


def test_a_retry_claimed_while_the_late_result_was_fetched_is_canceled(harness: Harness):
    """What the late result replaces is read under the row lock: here the retry
    claimed and submitted attempt 3 while attempt 1's result was being fetched."""
    before = doubles()
    job_id, second = taken_over(harness)
    in_backoff(harness, job_id, 2, second)
    harness.dispatch.take()
    harness.fal.finish(LOST)
    third = harness.fal.accept()
    fetch = harness.fal.result

    def result_while_retried(request_id: str):  # type: ignore[no-untyped-def]
        harness.clock.now = harness.job(job_id).due_at  # the backoff ended
        submission.run(harness.svc, job_id)  # attempt 3 is sent
        return fetch(request_id)

    harness.fal.result = result_while_retried  # type: ignore[method-assign]
    webhook(harness, job_id, 1, Completion(True, LOST))
    row = harness.job(job_id)
    assert (row.status, row.attempt, row.fal_request_id) == (JobStatus.SUCCEEDED, 3, LOST)
    assert harness.fal.canceled == [third]
    # Attempts 2 (failed) and 3 (canceled) both ran at fal beside attempt 1.
    assert counted(before) == {"superseded_finished": 2}


def test_a_retry_fal_refused_is_no_double(harness: Harness):
    """Attempt 2 was refused at submit (429): fal ran attempt 1 only."""
    before = doubles()
    use_webhooks(harness)
    job = harness.start_job()
    harness.fal.refuse(FalFailure("fal.unavailable", retriable=True, in_doubt=True))
    submission.run(harness.svc, job.id)
    harness.advance(harness.svc.settings.fal_in_doubt_seconds)
    harness.fal.refuse(classify_http(429, {}, None, None))
    harness.dispatch.take()
    [retry] = submission.run(harness.svc, job.id)
    assert retry.task == RUN_TRYON
    assert (harness.job(job.id).status, harness.job(job.id).attempt) == (JobStatus.QUEUED, 2)
    harness.fal.finish(LOST)
    webhook(harness, job.id, 1, Completion(True, LOST))
    row = harness.job(job.id)
    assert (row.status, row.fal_request_id) == (JobStatus.SUCCEEDED, LOST)
    retry_submits_nothing(harness, 2)
    assert counted(before) == {}


def test_an_earlier_result_after_the_job_succeeded_is_counted_once(harness: Harness):
    before = doubles()
    job_id, second = taken_over(harness)
    harness.fal.finish(second)
    assert completion.poll(harness.svc, job_id, 2) == []
    done = harness.job(job_id)
    assert (done.status, done.fal_request_id) == (JobStatus.SUCCEEDED, second)
    # Attempt 1, presumed lost, had run at fal after all: a second paid result.
    harness.fal.finish(LOST)
    for _ in range(2):  # fal delivers it twice
        webhook(harness, job_id, 1, Completion(True, LOST))
    row = harness.job(job_id)
    assert (row.status, row.fal_request_id, row.result_sha256) == (
        JobStatus.SUCCEEDED, second, done.result_sha256)
    assert counted(before) == {"superseded_after_success": 1}
    assert harness.audit(job_id).count("tryon.result_unused") == 1
    assert LOST not in harness.fal.result_reads
    # The result used, delivered again, is no double.
    webhook(harness, job_id, 2, Completion(True, second))
    assert counted(before) == {"superseded_after_success": 1}


def test_an_earlier_result_after_the_job_failed_for_good_leaves_it_failed(harness: Harness):
    before = doubles()
    job_id, second = taken_over(harness)
    webhook(harness, job_id, 2, Completion(False, second, error_type="content_policy_violation"))
    assert harness.job(job_id).status == JobStatus.FAILED
    harness.fal.finish(LOST)
    webhook(harness, job_id, 1, Completion(True, LOST))
    row = harness.job(job_id)
    assert (row.status, row.error_code, row.result_key) == (
        JobStatus.FAILED, "fal.content_policy", None)
    assert harness.objects(harness.svc.settings.processed_bucket) == set()
    assert counted(before) == {}  # one paid result, not used: no double
    assert harness.audit(job_id).count("tryon.result_unused") == 1


def test_an_earlier_result_after_the_job_was_deleted(harness: Harness):
    before = doubles()
    job_id, second = taken_over(harness)
    harness.fal.finish(second)
    assert completion.poll(harness.svc, job_id, 2) == []
    assert erase_job(harness.svc, job_id, reason="user")
    harness.fal.finish(LOST)
    webhook(harness, job_id, 1, Completion(True, LOST))
    webhook(harness, job_id, 1, Completion(True, LOST))
    assert harness.job(job_id) is None
    assert harness.objects(harness.svc.settings.processed_bucket) == set()
    # Its kept audit trail says it had finished with attempt 2's result: a double.
    assert counted(before) == {"superseded_after_success": 1}


def test_a_result_for_a_job_deleted_in_flight_writes_nothing(harness: Harness):
    before = doubles()
    job_id, second = taken_over(harness)
    assert erase_job(harness.svc, job_id, reason="user")
    assert harness.fal.canceled == [second]
    harness.fal.finish(LOST)
    webhook(harness, job_id, 1, Completion(True, LOST))
    assert harness.job(job_id) is None
    assert harness.objects(harness.svc.settings.processed_bucket) == set()
    assert counted(before) == {}
    assert harness.fal.result_reads == []
