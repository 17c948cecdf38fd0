"""The beat's safety net for try-ons (shared/tryons/reconcile.py) and the deadline
(shared/tryons/state.enforce_deadline): every job nobody acts on is moved on."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.core.task_names import POLL_TRYON, RUN_TRYON, TRYON_DEADLINE
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure
from shared.models import JobStatus
from shared.tryons import submission
from shared.tryons.completion import complete
from shared.tryons.reconcile import reconcile
from shared.tryons.state import SILENT_AFTER, enforce_deadline
from tests.conftest import WorkerDied
from tests.unit.harness import Harness


def test_nothing_to_do_while_every_job_is_looked_after(harness: Harness):
    harness.submitted_job()
    harness.start_job()  # due now; its message is on the way
    assert reconcile(harness.svc) == []


def test_a_submitted_job_with_no_news_is_asked_about(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.advance(SILENT_AFTER + timedelta(seconds=1))
    follow = reconcile(harness.svc)
    assert [(f.task, f.args) for f in follow] == [(POLL_TRYON, (job.id, 1, False))]
    assert harness.job(job.id).due_at == harness.clock() + SILENT_AFTER
    assert reconcile(harness.svc) == []  # the check sent is waited for


def test_a_claim_whose_lease_ended_is_handed_to_run_which_takes_it_over(harness: Harness):
    job = harness.start_job()

    def dies_while_submitting(arguments, webhook_url, *, start_timeout):  # type: ignore[no-untyped-def]
        raise WorkerDied  # nothing after the claim runs

    harness.fal.submit = dies_while_submitting  # type: ignore[method-assign]
    with pytest.raises(WorkerDied):
        submission.run(harness.svc, job.id)
    del harness.fal.submit  # the scripted gateway again
    assert harness.job(job.id).status == JobStatus.PROCESSING
    assert reconcile(harness.svc) == []  # the lease still runs
    harness.advance(harness.svc.settings.fal_in_doubt_seconds + 1)
    [follow] = reconcile(harness.svc)
    assert (follow.task, follow.args) == (RUN_TRYON, (job.id,))
    request_id = harness.fal.accept()
    submission.run(harness.svc, job.id)
    row = harness.job(job.id)
    assert (row.status, row.attempt, row.fal_request_id) == (JobStatus.PROCESSING, 2, request_id)


def test_a_job_past_its_deadline_is_failed_and_its_request_canceled(harness: Harness):
    job, request_id, follow = harness.submitted_job()
    assert TRYON_DEADLINE not in [f.task for f in follow]  # no message held until then
    harness.advance(harness.svc.settings.fal_deadline_seconds - 1)
    assert TRYON_DEADLINE not in [f.task for f in reconcile(harness.svc)]
    assert enforce_deadline(harness.svc, job.id) == []  # early (by this clock): left alone
    assert harness.job(job.id).status == JobStatus.PROCESSING
    harness.advance(2)
    [deadline] = [f for f in reconcile(harness.svc) if f.task == TRYON_DEADLINE]
    assert (deadline.args, deadline.countdown) == ((job.id,), 0.0)
    assert enforce_deadline(harness.svc, job.id) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code) == (JobStatus.FAILED, "fal.timeout")
    assert harness.fal.canceled == [request_id]
    assert enforce_deadline(harness.svc, job.id) == []  # done: nothing more


def test_a_retry_that_would_end_after_the_deadline_times_out_instead(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.advance(harness.svc.settings.fal_deadline_seconds - 1)
    assert complete(harness.svc, job.id, 1, Completion(False, request_id,
                                                       error_type="runner_disconnected")) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code) == (JobStatus.FAILED, "fal.timeout")
    assert harness.fal.canceled == [request_id]


def test_a_cancel_that_fails_does_not_keep_the_job_from_failing(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.fal.cancel_failure = FalFailure("fal.unavailable", retriable=True, status=503)
    harness.advance(harness.svc.settings.fal_deadline_seconds + 1)
    [deadline] = [f for f in reconcile(harness.svc) if f.task == TRYON_DEADLINE]
    enforce_deadline(harness.svc, *deadline.args)
    assert harness.job(job.id).status == JobStatus.FAILED
    assert harness.fal.canceled == [request_id]
