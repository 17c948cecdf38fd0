"""Try-ons whose worker dies: claims are leases taken over when they end, a
submission whose fate is unknown is never doubled while its webhook can still
finish the job, the deadline counts from the first accepted submission and every
submission carries fal's start timeout. Against the fal emulator through the real
fal-client, with real PostgreSQL, Redis and LocalStack S3.

A worker "dies" here the way a SIGKILL looks from the database: the claim was
committed, then nothing more of that run happens (a BaseException the code under
test does not catch stands in for the kill; tests/faults kills real processes)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from devstack.procs import wait_until
from shared.models import TryOn
from shared.tryons import completion, reconcile, state, submission
from tests.conftest import WorkerDied, fixture_bytes, shift_clock
from tests.integration.test_tryons import (
    job_row,
    queued_job,
    start_job,
    wait_done,
)
from tests.integration.test_upload_flow import upload_ready

ASTRONAUT = fixture_bytes("astronaut.jpg")



class DyingGateway:
    """The real gateway, except that the first submit dies, before or after the
    request reached fal; `during_first` runs inside the first submit instead."""

    def __init__(self, real: Any, *, after_send: bool = True) -> None:
        self.real, self.after_send = real, after_send
        self.calls: list[dict[str, Any]] = []
        self.during_first: Any = None

    def submit(self, arguments: dict[str, Any], webhook_url: str | None, **options: Any) -> str:
        self.calls.append(options)
        if len(self.calls) > 1:
            return self.real.submit(arguments, webhook_url, **options)
        if self.during_first is not None:
            self.during_first()
            return self.real.submit(arguments, webhook_url, **options)
        if not self.after_send:
            raise WorkerDied
        self.real.submit(arguments, webhook_url, **options)
        raise WorkerDied  # fal accepted it; the request id is never recorded

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0




def die_in_run(svc, job_id: str) -> TryOn:
    with pytest.raises(WorkerDied):
        submission.run(svc, job_id)
    job = job_row(svc, job_id)
    assert (job.status, job.attempt, job.fal_request_id) == ("processing", 1, None)
    return job


def test_a_kill_after_fal_accepted_is_finished_by_the_webhook_without_a_second_submit(
        client, auth, svc, dispatch, emulator, live_api):
    svc.fal = DyingGateway(svc.fal)
    job_id = queued_job(client, auth, dispatch, "kim")
    claimed = die_in_run(svc, job_id)
    # The redelivered task comes at once and leaves the live lease alone, but
    # comes back when it ends, in case the claimant is really gone.
    (follow,) = submission.run(svc, job_id)
    assert follow.task == "tryons.run"
    assert 15 < follow.countdown <= svc.settings.fal_in_doubt_seconds + 1
    job = wait_done(svc, dispatch, job_id)  # the emulator's webhook names job and attempt 1
    assert job.status == "succeeded" and job.attempt == 1
    stats = emulator.stats()
    assert stats["submits"] == 1 and stats["enqueued"] == 1
    (request,) = stats["requests"]
    assert job.fal_request_id == request  # learnt from the webhook
    shift_clock(svc, svc.settings.fal_in_doubt_seconds + 1)
    assert submission.run(svc, job_id) == []  # the lease's end finds the job done
    assert claimed.due_at is not None


def test_a_claim_whose_worker_died_is_taken_over_when_its_lease_ends(
        client, auth, svc, dispatch, emulator):
    svc.fal = DyingGateway(svc.fal)
    taken_over = counter("tryon_claims_taken_over_total")
    job_id = queued_job(client, auth, dispatch, "lou")
    claimed = die_in_run(svc, job_id)
    assert reconcile.reconcile(svc) == []  # the lease still runs
    lease = svc.settings.fal_in_doubt_seconds
    assert claimed.due_at - svc.clock() <= timedelta(seconds=lease)
    shift_clock(svc, lease + 1)
    # No redelivery (a worker that died whole holds its message for an hour): the
    # reconciler hands the job to `run`, which takes the claim over.
    follow = reconcile.reconcile(svc)
    assert [(f.task, f.args) for f in follow] == [("tryons.run", (job_id,))]
    state.send(svc, follow)
    job = wait_done(svc, dispatch, job_id)
    assert (job.status, job.attempt) == ("succeeded", 2)
    assert counter("tryon_claims_taken_over_total") == taken_over + 1
    # Polling mode: the first submission could never finish the job, so it was sent
    # again; the emulator saw both.
    assert emulator.stats()["enqueued"] == 2
    # The deadline counts from the first submission fal accepted that we know of,
    # not from the claim that died.
    assert job.first_submitted_at > claimed.updated_at + timedelta(seconds=lease)
    assert job.deadline_at == job.first_submitted_at + timedelta(
        seconds=svc.settings.fal_deadline_seconds)


def test_a_kill_before_sending_is_resent_once_and_only_once(client, auth, svc, dispatch,
                                                            emulator, live_api):
    svc.fal = DyingGateway(svc.fal, after_send=False)
    job_id = queued_job(client, auth, dispatch, "mia")
    die_in_run(svc, job_id)
    assert emulator.stats()["submits"] == 0
    shift_clock(svc, svc.settings.fal_in_doubt_seconds + 1)
    follow = reconcile.reconcile(svc)
    follow += reconcile.reconcile(svc)  # a second pass while the first message waits
    state.send(svc, follow)
    job = wait_done(svc, dispatch, job_id)
    assert (job.status, job.attempt) == ("succeeded", 2)
    assert emulator.stats()["submits"] == 1


def _with_the_answer_lost(client, auth, svc, dispatch, emulator, user: str):
    """A job whose first submission fal accepted but whose answer never came back."""
    emulator.configure(submit_faults=["drop_after_enqueue"])
    upload = upload_ready(client, auth(user), ASTRONAUT)
    job_id = start_job(client, auth(user), upload["uploadId"]).get_json()["jobId"]
    return wait_done(svc, dispatch, job_id)


def test_an_answer_lost_after_sending_waits_for_the_webhook(client, auth, svc, dispatch,
                                                            emulator, live_api):
    in_doubt = counter("fal_submit_total", result="in_doubt")
    job = _with_the_answer_lost(client, auth, svc, dispatch, emulator, "ned")
    assert (job.status, job.attempt) == ("succeeded", 1)
    assert emulator.stats()["enqueued"] == 1  # not submitted twice
    assert counter("fal_submit_total", result="in_doubt") == in_doubt + 1


def test_an_answer_lost_without_webhooks_is_submitted_again_and_counted(client, auth, svc,
                                                                       dispatch, emulator):
    doubles = counter("fal_double_submissions_total", cause="no_webhook")
    job = _with_the_answer_lost(client, auth, svc, dispatch, emulator, "ora")
    assert (job.status, job.attempt) == ("succeeded", 2)
    assert emulator.stats()["enqueued"] == 2
    assert counter("fal_double_submissions_total", cause="no_webhook") == doubles + 1


def test_a_claimant_that_lost_its_lease_cancels_what_it_submitted(client, auth, svc, dispatch,
                                                                  emulator):
    gateway = svc.fal = DyingGateway(svc.fal)
    doubles = counter("fal_double_submissions_total", cause="lease_lapsed")
    job_id = queued_job(client, auth, dispatch, "pam")

    def takeover_meanwhile() -> None:
        # The first submit hangs past the lease; meanwhile the job is taken over.
        shift_clock(svc, svc.settings.fal_in_doubt_seconds + 1)
        assert submission.run(svc, job_id) is not None

    gateway.during_first = takeover_meanwhile
    assert submission.run(svc, job_id) == []
    job = job_row(svc, job_id)
    assert job.attempt == 2 and job.fal_request_id
    stats = emulator.stats()
    assert stats["enqueued"] == 2 and stats["cancels"] == 1
    assert stats["requests"][job.fal_request_id]["cancel_requested"] is False
    assert counter("fal_double_submissions_total", cause="lease_lapsed") == doubles + 1
    state.send(svc, [state.FollowUp("tryons.poll", (job_id, 2))])
    assert wait_done(svc, dispatch, job_id).status == "succeeded"


def test_a_superseded_submission_that_finishes_after_all_is_taken_and_the_other_canceled(
        client, auth, svc, dispatch, emulator, live_api):
    emulator.configure(webhook_mode="late", webhook_late_seconds=4)
    svc.fal = DyingGateway(svc.fal)
    doubles = counter("fal_double_submissions_total", cause="superseded_finished")
    job_id = queued_job(client, auth, dispatch, "quy")
    die_in_run(svc, job_id)
    first = next(iter(emulator.stats()["requests"]))
    emulator.configure(job_faults=["never_complete"])  # the second submission hangs
    shift_clock(svc, svc.settings.fal_in_doubt_seconds + 1)
    dispatch.run_inline = False
    submission.run(svc, job_id)  # takeover: attempt 2
    dispatch.run_inline = True
    second = job_row(svc, job_id).fal_request_id
    assert second and second != first
    job = wait_done(svc, dispatch, job_id)  # attempt 1's late webhook arrives
    assert job.status == "succeeded" and job.fal_request_id == first
    # canceled right after the commit, while the webhook's request finishes
    assert wait_until(lambda: emulator.stats()["requests"][second]["cancel_requested"], 5)
    assert counter("fal_double_submissions_total", cause="superseded_finished") == doubles + 1


def test_an_earlier_attempts_success_while_the_job_waits_in_backoff_finishes_it(
        client, auth, svc, dispatch, emulator, live_api):
    """Attempt 1 was accepted but its answer lost; attempt 2 ran and failed at fal.
    While the job waits to retry, attempt 1's webhook reports its result: the job
    takes it, the retry submits nothing, and the double is counted (issue 15)."""
    emulator.configure(webhook_mode="late", webhook_late_seconds=4)
    svc.fal = DyingGateway(svc.fal)
    doubles = counter("fal_double_submissions_total", cause="superseded_in_backoff")
    job_id = queued_job(client, auth, dispatch, "vic")
    die_in_run(svc, job_id)
    first = next(iter(emulator.stats()["requests"]))
    emulator.configure(job_faults=["error_internal"])  # the second submission fails at fal
    shift_clock(svc, svc.settings.fal_in_doubt_seconds + 1)
    submission.run(svc, job_id)  # takeover: attempt 2
    second = job_row(svc, job_id).fal_request_id
    assert second and second != first
    assert wait_until(lambda: emulator.stats()["requests"][second]["completed_at"], 5)
    # Its failure is learnt by a status check (its webhook comes late too); the retry
    # is scheduled with its backoff and held here until attempt 1's webhook came.
    state.send(svc, completion.poll(svc, job_id, 2, reschedule=False))
    job = job_row(svc, job_id)
    assert (job.status, job.attempt, job.fal_request_id) == ("queued", 2, None)
    retries = [(name, args) for _, name, args in dispatch.scheduled if name == "tryons.run"]
    assert retries
    assert wait_until(lambda: job_row(svc, job_id).status != "queued", 10)
    job = job_row(svc, job_id)
    assert (job.status, job.attempt, job.fal_request_id) == ("succeeded", 2, first)
    for name, args in retries:
        dispatch.run_task(name, *args)  # the retry, due now, finds the job done
    assert emulator.stats()["enqueued"] == 2  # no third submission
    assert counter("fal_double_submissions_total", cause="superseded_in_backoff") == doubles + 1


def test_every_submission_carries_the_time_left_as_start_timeout(client, auth, svc, dispatch,
                                                                 emulator):
    from tests.integration.test_tryons import SpyGateway

    spy = svc.fal = SpyGateway(svc.fal)
    # A refused submit (not accepted: the deadline has not started), then one that
    # fal accepts and fails (the deadline runs from it), then the one that succeeds.
    emulator.configure(submit_faults=["503_runner"], job_faults=["error_internal"])
    headers = auth("rue")
    upload = upload_ready(client, headers, ASTRONAUT)
    job_id = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    job = wait_done(svc, dispatch, job_id)
    assert (job.status, job.attempt) == ("succeeded", 3)
    refused, accepted, retry = (o["start_timeout"] for o in spy.options)
    # Before any accepted submission the whole deadline is left; bounded by the
    # input link's lifetime (300 s) less the time fal needs to download it.
    deadline = svc.settings.fal_deadline_seconds
    assert refused == accepted == min(deadline, 270)
    left = (job.deadline_at - job.first_submitted_at).total_seconds()
    assert left == deadline and deadline - 10 < retry < deadline
    at_fal = sorted(r["start_timeout"] for r in emulator.stats()["requests"].values())
    assert at_fal == sorted([accepted, retry])


def test_a_submission_fal_did_not_start_in_time_is_dropped_unstarted(client, auth, svc,
                                                                      dispatch, emulator):
    from dataclasses import replace

    svc.settings = replace(svc.settings, fal_deadline_seconds=2)
    emulator.configure(queue_seconds=5)  # fal's queue is longer than the time left
    headers = auth("sal")
    upload = upload_ready(client, headers, ASTRONAUT)
    job_id = start_job(client, headers, upload["uploadId"]).get_json()["jobId"]
    job = wait_done(svc, dispatch, job_id)
    assert (job.status, job.error_code) == ("failed", "fal.timeout")
    (request,) = emulator.stats()["requests"].values()
    assert request["started_at"] is None  # never ran, so never billed
    assert request["error_type"] == "request_timeout"
