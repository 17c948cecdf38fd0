"""Finishing a try-on: what fal reported (a webhook or a status check) becomes a
stored result, a retry, or a failure.

Finishing takes the job's row lock: one finalizer writes the result objects and
commits; a late or duplicate completion, a deletion or an erasure waits for it and
then finds the job done or gone.

A result fal produced is paid for, so while the job is in flight any success of
any of its attempts finishes it: the current one's, an earlier attempt's whose
claimant was presumed dead, or one that arrives while the job waits in retry
backoff (the pending run then finds nothing to do). A later attempt still at fal
is canceled. Whenever fal has run more than one submission of the job that could
produce a result, it is counted once in `fal_double_submissions_total`; a result
the job does not use is audited (`tryon.result_unused`), once per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.core import audit, metrics
from shared.core.db import execute_dml, updated_rows
from shared.core.task_names import POLL_TRYON
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure, cancel_quietly, classify_completion_error
from shared.models import AuditEvent, JobStatus, TryOn, Upload
from shared.services import Services
from shared.storage.keys import TEMPORARY
from shared.tryons import results
from shared.tryons.result_download import download_result
from shared.tryons.retention import result_deadline
from shared.tryons.state import (
    FollowUp,
    after_failure,
    load_job,
    past_deadline,
    sync_tags_quietly,
    time_out,
)

log = logging.getLogger(__name__)

# `cause` of fal_double_submissions_total when an earlier attempt's result arrives:
# while a later attempt was at fal (or being sent), while the job waited to retry
# a later attempt, or after the job had finished with another result.
SUPERSEDED_FINISHED = "superseded_finished"
SUPERSEDED_IN_BACKOFF = "superseded_in_backoff"
SUPERSEDED_AFTER_SUCCESS = "superseded_after_success"
RESULT_UNUSED = "tryon.result_unused"


@dataclass(frozen=True)
class _Finished:
    """What `_succeed` replaced: the doubles it revealed (how many, and their `cause`)
    and the request of a later attempt still at fal, to cancel."""

    doubles: int
    cause: str
    cancel: str | None


def complete(svc: Services, job_id: str, attempt: int, completion: Completion) -> list[FollowUp]:
    job = load_job(svc, job_id)
    if job is None or job.status not in JobStatus.IN_FLIGHT:
        if completion.ok:
            _result_after_the_end(svc, job_id, attempt, completion.request_id)
        return []
    if attempt < 1 or attempt > job.attempt:
        log.info("ignoring completion for job %s attempt %d (no such attempt)", job_id, attempt)
        return []
    # The attempt (bound to the webhook URL by our HMAC token) names the submission.
    # Late: not the submission in flight, but an earlier one, or the one whose
    # failure put the job back in the queue to wait for its retry.
    late = attempt < job.attempt or job.status == JobStatus.QUEUED
    if late and not completion.ok:
        return []  # that attempt's failure was handled already (retried)
    # Once the current request id is known, the (signed) id of its completion must be it.
    if (not late and job.fal_request_id and completion.request_id
            and job.fal_request_id != completion.request_id):
        log.warning("completion for job %s names another request; ignored", job_id)
        return []
    if not completion.ok:
        return after_failure(svc, job.id, attempt, classify_completion_error(completion.error_type))
    request_id = completion.request_id or (None if late else job.fal_request_id)
    try:
        urls = list(completion.image_urls)
        if not urls:
            # A webhook carries ids only: the result is at fal, ask for it.
            if not request_id:
                raise FalFailure("fal.bad_result", retriable=False, error_type="no request id")
            urls = svc.fal.result(request_id).image_urls
        rendered = results.render(download_result(svc, urls[0]), svc.settings.max_image_pixels)
    except results.NotAnImage as bad:
        failure = FalFailure("fal.bad_result", retriable=False, error_type=bad.detail)
        return [] if late else after_failure(svc, job.id, attempt, failure)
    except FalFailure as failure:
        if late:
            return []  # the job goes on as if it had never come (its retry is due)
        if failure.retriable and request_id:
            # The result is there, we could not fetch it: ask again, do not resubmit.
            return [FollowUp(POLL_TRYON, (job.id, attempt, False), svc.settings.fal_poll_seconds)]
        return after_failure(svc, job.id, attempt, failure)
    finished = _succeed(svc, job.id, attempt, rendered, request_id)
    if finished is None:
        # Another finalizer (or a deletion) came first: this result is not used.
        _result_after_the_end(svc, job_id, attempt, request_id)
        return []
    if finished.doubles:
        metrics.FAL_DOUBLE_SUBMISSIONS.labels(cause=finished.cause).inc(finished.doubles)
    if finished.cancel:
        # A submission presumed lost finished after all: the later one is not needed.
        cancel_quietly(svc.fal, finished.cancel)
    return []


def _succeed(svc: Services, job_id: str, attempt: int, rendered: results.Rendered,
             request_id: str | None) -> _Finished | None:
    """Write the result and mark the job succeeded, under the job's row lock: of
    concurrent finalizers one writes, and a job deleted or ended meanwhile gets
    nothing (None). What a late result replaces is read under the same lock."""
    with svc.sessions.begin() as session:
        job = session.scalars(select(TryOn).where(TryOn.id == job_id).with_for_update()) \
            .one_or_none()
        if job is None or job.status not in JobStatus.IN_FLIGHT or attempt > job.attempt:
            return None
        finished = _replaced(session, job, attempt)
        # The retention deadline counts from before the objects were written, so the
        # bucket's lifecycle (which counts from their creation) never comes first.
        stored_at = svc.clock()
        key, thumb_key = results.write(svc, job, rendered)
        now = svc.clock()
        clean = rendered.result
        if not updated_rows(session, update(TryOn).where(
                TryOn.id == job.id, TryOn.status.in_(JobStatus.IN_FLIGHT)).values(
                status=JobStatus.SUCCEEDED, result_key=key, thumbnail_key=thumb_key,
                result_sha256=clean.sha256, result_width=clean.width, result_height=clean.height,
                completed_at=now, updated_at=now, due_at=None,
                fal_request_id=request_id or job.fal_request_id,
                delete_after=None if job.favorite else result_deadline(svc, stored_at),
                result_tags=None if job.favorite else TEMPORARY)):
            return None
        if svc.settings.delete_selfie_after_job:
            # Schedules the selfie's deletion: the retention pass removes it next.
            execute_dml(session, update(Upload).where(Upload.id == job.upload_id)
                            .values(delete_after=now))
        # `job_attempt` and the request id let a result arriving after a deletion
        # be told apart from this one (see `_result_after_the_end`).
        audit.record(session, at=now, user_id=job.user_id, action="tryon.succeeded",
                     subject_type="try_on", subject_id=job.id, attempt=attempt,
                     job_attempt=job.attempt, fal_request_id=request_id or job.fal_request_id,
                     result_sha256=clean.sha256, source_sha256=job.source_sha256)
        favorite, first_submitted_at, of = job.favorite, job.first_submitted_at, job.attempt
        accepted_at = job.created_at
    if favorite:
        sync_tags_quietly(svc, job_id)  # favorited while it ran: tag it kept now
    metrics.FAL_SUCCESS.inc()
    if first_submitted_at:
        metrics.FAL_DURATION.observe((now - first_submitted_at).total_seconds())
    metrics.JOB_OUTCOMES.labels(outcome="succeeded").inc()
    metrics.JOB_DURATION.labels(outcome="succeeded").observe((now - accepted_at).total_seconds())
    log.info("job %s succeeded (attempt %d of %d)", job_id, attempt, of)
    return finished


def poll(svc: Services, job_id: str, attempt: int, *, reschedule: bool = True) -> list[FollowUp]:
    """One status check; completion handled inline, else checked again later."""
    job = load_job(svc, job_id)
    if job is None or job.status != JobStatus.PROCESSING or job.attempt != attempt:
        return []
    again = [FollowUp(POLL_TRYON, (job_id, attempt), svc.settings.fal_poll_seconds)] \
        if reschedule else []
    if past_deadline(job, svc.clock()):
        return time_out(svc, job)  # without webhooks this check is the first to know
    if not job.fal_request_id:
        return again
    try:
        status = svc.fal.status(job.fal_request_id)
        if not status.completed:
            return again
        if status.error or status.error_type:
            return after_failure(svc, job.id, attempt, _failure_of(svc, job.fal_request_id,
                                                                   status.error_type))
        output = svc.fal.result(job.fal_request_id)
    except FalFailure as failure:
        # A check that failed in transit is simply made again later (still a failed
        # request to fal: counted here, as after_failure counts the others).
        if not failure.retriable:
            return after_failure(svc, job.id, attempt, failure)
        metrics.FAL_FAILURES.labels(code=failure.code).inc()
        return again
    return complete(svc, job_id, attempt,
                    Completion(True, job.fal_request_id, image_urls=tuple(output.image_urls)))


def _failure_of(svc: Services, request_id: str, error_type: str | None) -> FalFailure:
    """Why a request fal COMPLETED with an error failed: the result body carries the
    model's error detail (a type the status does not name), so it is asked for."""
    try:
        svc.fal.result(request_id)
    except FalFailure as failure:
        if failure.status is not None:  # fal answered: its error, classified
            return failure
    return classify_completion_error(error_type)


def _replaced(session: Session, job: TryOn, attempt: int) -> _Finished:
    """What taking attempt `attempt`'s result does to the job as locked. Every later
    attempt fal accepted (its `tryon.invoked` event) ran beside this one, presumed
    lost: a double each; so does one being sent or in doubt right now (it may have
    been accepted). A later attempt refused at submit cost nothing and is not counted."""
    cause = SUPERSEDED_IN_BACKOFF if job.status == JobStatus.QUEUED else SUPERSEDED_FINISHED
    if attempt == job.attempt:
        return _Finished(0, cause, None)  # the current submission, or the one backoff repeats
    accepted = {int(e.details.get("attempt") or 0) for e in _trail(session, job.id)
                if e.action == "tryon.invoked"}
    doubles = sum(1 for n in accepted if attempt < n <= job.attempt)
    if job.status == JobStatus.PROCESSING and job.fal_request_id is None:
        # Being sent (or in doubt): once the job is done its claimant's record fails
        # and it cancels what it submitted (submission._submission_orphaned).
        doubles += 1
    cancel = job.fal_request_id if job.status == JobStatus.PROCESSING else None
    return _Finished(doubles, cause, cancel)


def _result_after_the_end(svc: Services, job_id: str, attempt: int,
                          request_id: str | None) -> None:
    """A success for a job that has ended (succeeded with another result, failed for
    good) or is gone: it is not used, and it is audited once per request. It is a
    double when an earlier attempt's result arrives after a later attempt's was used;
    a later attempt's own result, arriving after an earlier one won, was counted
    when that one won (`_replaced`)."""
    if not request_id:
        return
    with svc.sessions.begin() as session:
        job = session.scalars(select(TryOn).where(TryOn.id == job_id).with_for_update()) \
            .one_or_none()
        trail = _trail(session, job_id)
        ended = _Ended.of_row(job) if job is not None else _Ended.of_trail(trail)
        if ended is None or attempt < 1 or attempt > ended.attempt or request_id == ended.used:
            return  # nothing known of it, no such attempt, or a duplicate of the result used
        if any(e.action == RESULT_UNUSED and e.details.get("fal_request_id") == request_id
               for e in trail):
            return  # a duplicate delivery of a result already set aside
        double = ended.used is not None and attempt < ended.attempt
        audit.record(session, at=svc.clock(), user_id=ended.user_id, action=RESULT_UNUSED,
                     subject_type="try_on", subject_id=job_id, attempt=attempt,
                     fal_request_id=request_id, double=double)
    if double:
        metrics.FAL_DOUBLE_SUBMISSIONS.labels(cause=SUPERSEDED_AFTER_SUCCESS).inc()
    log.info("job %s: a result of attempt %d came after the job ended; not used (double: %s)",
             job_id, attempt, double)


@dataclass(frozen=True)
class _Ended:
    """A job that ended: its owner, its last attempt, and the request whose result it
    used (None if it did not succeed)."""

    user_id: str
    attempt: int
    used: str | None

    @staticmethod
    def of_row(job: TryOn) -> _Ended | None:
        if job.status in JobStatus.IN_FLIGHT:
            return None  # back in flight meanwhile: cannot be, a terminal state stays
        used = job.fal_request_id if job.status == JobStatus.SUCCEEDED else None
        return _Ended(job.user_id, job.attempt, used)

    @staticmethod
    def of_trail(trail: list[AuditEvent]) -> _Ended | None:
        """A deleted job, as its audit trail (kept) says it finished, if it succeeded."""
        done = next((e for e in trail if e.action == "tryon.succeeded"
                     and e.details.get("fal_request_id")), None)
        if done is None:
            return None
        return _Ended(done.user_id, int(done.details.get("job_attempt") or 0),
                      str(done.details["fal_request_id"]))


def _trail(session: Session, job_id: str) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(
        AuditEvent.subject_type == "try_on", AuditEvent.subject_id == job_id)
        .order_by(AuditEvent.id)))
