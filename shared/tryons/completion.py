"""Finishing a try-on: what fal reported (a webhook or a status check) becomes a
stored result, a retry, or a failure.

Finishing takes the job's row lock: one finalizer writes the result objects and
commits; a late or duplicate completion, a deletion or an erasure waits for it and
then finds the job done or gone. A result that still arrives for a superseded
attempt (its claimant was presumed dead) is taken, and counted as a double.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from shared.core import audit, metrics
from shared.core.db import updated_rows
from shared.core.task_names import POLL_TRYON
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure, cancel_quietly, classify_completion_error
from shared.models import JobStatus, TryOn, Upload
from shared.services import Services
from shared.storage.keys import TEMPORARY
from shared.tryons import results
from shared.tryons.result_download import download_result
from shared.tryons.retention import result_deadline
from shared.tryons.state import FollowUp, after_failure, load_job, sync_tags_quietly

log = logging.getLogger(__name__)


def complete(svc: Services, job_id: str, attempt: int, completion: Completion) -> list[FollowUp]:
    job = load_job(svc, job_id)
    if job is None or job.status != JobStatus.PROCESSING or attempt > job.attempt:
        log.info("ignoring completion for job %s attempt %d (stale or duplicate)", job_id, attempt)
        return []
    # The attempt (bound to the webhook URL by our HMAC token) names the submission;
    # once its request id is known, the (signed) id of the completion must be it.
    superseded = attempt < job.attempt
    if superseded and not completion.ok:
        return []  # an earlier attempt's failure: that attempt was retried already
    if (not superseded and job.fal_request_id and completion.request_id
            and job.fal_request_id != completion.request_id):
        log.warning("completion for job %s names another request; ignored", job_id)
        return []
    if not completion.ok:
        return after_failure(svc, job.id, attempt, classify_completion_error(completion.error_type))
    request_id = completion.request_id or (None if superseded else job.fal_request_id)
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
        return [] if superseded else after_failure(svc, job.id, attempt, failure)
    except FalFailure as failure:
        if superseded:
            return []
        if failure.retriable and request_id:
            # The result is there, we could not fetch it: ask again, do not resubmit.
            return [FollowUp(POLL_TRYON, (job.id, attempt, False), svc.settings.fal_poll_seconds)]
        return after_failure(svc, job.id, attempt, failure)
    if _succeed(svc, job.id, attempt, rendered, request_id) and superseded:
        # A submission presumed lost (its claimant died) finished after all, while a
        # later attempt was sent: that one is not needed any more.
        metrics.FAL_DOUBLE_SUBMISSIONS.labels(cause="superseded_finished").inc()
        if job.fal_request_id:
            cancel_quietly(svc.fal, job.fal_request_id)
    return []


def _succeed(svc: Services, job_id: str, attempt: int, rendered: results.Rendered,
             request_id: str | None) -> bool:
    """Write the result and mark the job succeeded, under the job's row lock: of
    concurrent finalizers one writes, and a job deleted meanwhile gets nothing."""
    with svc.sessions.begin() as session:
        job = session.scalars(select(TryOn).where(TryOn.id == job_id).with_for_update()) \
            .one_or_none()
        if job is None or job.status != JobStatus.PROCESSING:
            return False
        # The retention deadline counts from before the objects were written, so the
        # bucket's lifecycle (which counts from their creation) never comes first.
        stored_at = svc.clock()
        key, thumb_key = results.write(svc, job, rendered)
        now = svc.clock()
        clean = rendered.result
        if not updated_rows(session, update(TryOn).where(
                TryOn.id == job.id, TryOn.status == JobStatus.PROCESSING).values(
                status=JobStatus.SUCCEEDED, result_key=key, thumbnail_key=thumb_key,
                result_sha256=clean.sha256, result_width=clean.width, result_height=clean.height,
                completed_at=now, updated_at=now, due_at=None,
                fal_request_id=request_id or job.fal_request_id,
                delete_after=None if job.favorite else result_deadline(svc, stored_at),
                result_tags=None if job.favorite else TEMPORARY)):
            return False
        if svc.settings.delete_selfie_after_job:
            # Schedules the selfie's deletion: the retention pass removes it next.
            session.execute(update(Upload).where(Upload.id == job.upload_id)
                            .values(delete_after=now))
        audit.record(session, at=now, user_id=job.user_id, action="tryon.succeeded",
                     subject_type="try_on", subject_id=job.id, attempt=attempt,
                     result_sha256=clean.sha256, source_sha256=job.source_sha256)
        favorite, first_submitted_at = job.favorite, job.first_submitted_at
    if favorite:
        sync_tags_quietly(svc, job_id)  # favorited while it ran: tag it kept now
    metrics.FAL_SUCCESS.inc()
    if first_submitted_at:
        metrics.FAL_DURATION.observe((now - first_submitted_at).total_seconds())
    metrics.JOB_OUTCOMES.labels(outcome="succeeded").inc()
    log.info("job %s succeeded (attempt %d)", job_id, attempt)
    return True


def poll(svc: Services, job_id: str, attempt: int, *, reschedule: bool = True) -> list[FollowUp]:
    """One status check; completion handled inline, else checked again later."""
    job = load_job(svc, job_id)
    if job is None or job.status != JobStatus.PROCESSING or job.attempt != attempt:
        return []
    again = [FollowUp(POLL_TRYON, (job_id, attempt), svc.settings.fal_poll_seconds)] \
        if reschedule else []
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
        # A check that failed in transit is simply made again later.
        return again if failure.retriable else after_failure(svc, job.id, attempt, failure)
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
