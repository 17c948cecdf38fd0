"""Running a try-on: wait for the upload, claim an attempt, make one fal submission.

No worker slot is held while fal works: the claim is a lease (`due_at` is its end,
FAL_IN_DOUBT_SECONDS), one submission goes out, and completion arrives by webhook
or by a status check (shared/tryons/completion.py).

- A claimant that died is taken over once its lease ended, by the redelivered task
  or by the reconciler, whichever comes first. The attempt number fences the old
  claimant: its writes name its attempt.
- A submission whose outcome is unknown (the claimant died, or the connection
  broke after the request went out) may have been accepted by fal. Its webhook
  names the job and attempt, so with webhooks the lease is also the time it is
  given to report before the job is submitted again.
- The deadline counts from the first submission fal accepted, and every submission
  carries fal's start timeout, so a request fal has not started in time is dropped
  unbilled instead of running after we gave up. The reconciler enforces it.
- Before that, `submit_bound` bounds the job: one that fal has not accepted by then
  is failed (here, and by the reconciler), so even a job whose run keeps raising
  before its claim ends, and no longer holds its selfie past its deadline.
- The prompt is the one stored when the job was accepted: a style renamed or removed
  since, or a worker with another catalogue, runs it unchanged.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from shared.core import audit, metrics
from shared.core.config import Settings
from shared.core.db import execute_dml, updated_rows
from shared.core.task_names import POLL_TRYON, RUN_TRYON
from shared.fal.gateway import FalFailure, cancel_quietly
from shared.fal.webhooks import webhook_url
from shared.models import JobStatus, TryOn, Upload, UploadStatus
from shared.services import Services
from shared.tryons.hairstyles import RETIRED, accepted_prompt
from shared.tryons.state import (
    SILENT_AFTER,
    FollowUp,
    after_failure,
    fail,
    load_job,
    past_deadline,
    seconds_until,
    time_out,
)

log = logging.getLogger(__name__)

UPLOAD_WAIT_STEP_SECONDS = 1.0
SIGNED_INPUT_TTL_SECONDS = 300
# fal must have started a request this long before its input link expires (it
# still has to download the selfie), and fal refuses start timeouts of 1 s or less.
LINK_START_MARGIN_SECONDS = 30
MIN_START_TIMEOUT_SECONDS = 2.0
# Claims taken over count as attempts too; this bounds a job that keeps killing
# its workers (fal failures have their own budget, FAL_MAX_RETRIES).
MAX_ATTEMPTS = 10
# ETA tasks may run a little early; a run this close to its due time goes ahead.
EARLY_TOLERANCE = timedelta(seconds=1)
# Room in `submit_bound` for a queue backlog and the tasks' own retries.
QUEUE_SLACK = timedelta(minutes=10)
# after_failure's jitter is at most this factor of the nominal backoff.
MAX_JITTER = 1.25


def submit_bound(s: Settings) -> timedelta:
    """The longest a job may go from acceptance to fal's first acceptance: the upload
    wait, every claim's lease, every backoff at its longest, and QUEUE_SLACK. Past it
    the job fails with `fal.timeout`; from fal's first acceptance its deadline rules."""
    backoffs = sum(2 ** n * s.fal_retry_base_seconds * MAX_JITTER
                   for n in range(1, s.fal_max_retries + 1))
    return timedelta(seconds=s.upload_wait_seconds + MAX_ATTEMPTS * s.fal_in_doubt_seconds
                     + backoffs) + QUEUE_SLACK


def past_submit_bound(svc: Services, job: TryOn, now: datetime) -> bool:
    return job.deadline_at is None and now >= job.created_at + submit_bound(svc.settings)


def run(svc: Services, job_id: str) -> list[FollowUp]:
    job, upload = _load_with_upload(svc, job_id)
    if job is None or job.status not in JobStatus.IN_FLIGHT:
        return []
    now = svc.clock()
    if job.status == JobStatus.PROCESSING:
        if job.fal_request_id:
            return []  # submitted: its completion is on the way
        if job.due_at is not None and now < job.due_at:
            # Claimed, and the lease still runs: its claimant may be alive. Come back
            # when it ends, in case the claimant died (this is a redelivered task).
            return [FollowUp(RUN_TRYON, (job.id,), seconds_until(job.due_at, now) + 0.5)]
        metrics.TRYON_TAKEOVERS.inc()
        log.warning("job %s: the claim of attempt %d lapsed; taking it over", job.id, job.attempt)
    elif job.due_at is not None and now < job.due_at - EARLY_TOLERANCE:
        return [FollowUp(RUN_TRYON, (job.id,), seconds_until(job.due_at, now))]  # backoff
    if past_submit_bound(svc, job, now):
        fail(svc, job, "fal.timeout", detail="not accepted by fal within its bound")
        return []
    prompt = accepted_prompt(job.hairstyle_id, job.user_prompt, job.composed_prompt)
    if prompt is None:
        # Accepted before prompts were stored, and its style has left the catalogue:
        # nothing could ever run it, so it ends now instead of being sent again.
        fail(svc, job, RETIRED, detail=f"hairstyle {job.hairstyle_id} is gone")
        return []
    if upload is None or upload.status in (UploadStatus.DELETED, UploadStatus.EXPIRED):
        fail(svc, job, "upload.not_found")
        return []
    if upload.status == UploadStatus.REJECTED:
        fail(svc, job, "upload.rejected")
        return []
    if upload.status != UploadStatus.READY:
        if now >= job.created_at + timedelta(seconds=svc.settings.upload_wait_seconds):
            fail(svc, job, "upload.not_ready")
            return []
        with svc.sessions.begin() as session:
            execute_dml(session, update(TryOn).where(TryOn.id == job.id, TryOn.status == JobStatus.QUEUED)
                            .values(due_at=now + timedelta(seconds=UPLOAD_WAIT_STEP_SECONDS)))
        return [FollowUp(RUN_TRYON, (job.id,), UPLOAD_WAIT_STEP_SECONDS)]
    if past_deadline(job, now):
        return time_out(svc, job)
    if job.attempt >= MAX_ATTEMPTS:
        fail(svc, job, "fal.unavailable", detail="too many attempts")
        return []
    return _submit(svc, job, upload, prompt, now)


def _load_with_upload(svc: Services, job_id: str) -> tuple[TryOn | None, Upload | None]:
    """The job and its upload, which every run that goes ahead reads: one query (two
    sessions were a pool check-out, BEGIN, SELECT and ROLLBACK each)."""
    with svc.sessions() as session:
        row = session.execute(select(TryOn, Upload).outerjoin(Upload, Upload.id == TryOn.upload_id)
                              .where(TryOn.id == job_id)).one_or_none()
    return (row[0], row[1]) if row is not None else (None, None)


def _start_timeout(svc: Services, job: TryOn, now: datetime) -> float:
    """Time left until the deadline (all of it before the first accepted submit),
    bounded by what the signed input link leaves."""
    left = (seconds_until(job.deadline_at, now) if job.deadline_at is not None
            else float(svc.settings.fal_deadline_seconds))
    return max(MIN_START_TIMEOUT_SECONDS,
               min(left, SIGNED_INPUT_TTL_SECONDS - LINK_START_MARGIN_SECONDS))


def _submit(svc: Services, job: TryOn, upload: Upload, prompt: str,
            now: datetime) -> list[FollowUp]:
    s = svc.settings
    attempt = job.attempt + 1
    arguments = {
        "prompt": prompt,
        # A fresh link for every attempt, never stored, gone within 5 minutes. Signed
        # before the claim, so nothing slow stands between the claim and the send.
        "image_urls": [svc.upload_store.presign_get(str(upload.sanitized_key),
                                                    expires_in=SIGNED_INPUT_TTL_SECONDS)],
        "num_images": 1,
        "output_format": "jpeg",
        # One image is asked for; fal is not to generate (and bill) more.
        "limit_generations": True,
    }
    start_timeout = _start_timeout(svc, job, now)
    lease_end = now + timedelta(seconds=s.fal_in_doubt_seconds)
    with svc.sessions.begin() as session:
        # Claim this attempt: of two runs exactly one wins, and a claim whose lease
        # still runs is never taken.
        if not updated_rows(session, update(TryOn).where(
                TryOn.id == job.id, TryOn.attempt == job.attempt,
                or_(TryOn.status == JobStatus.QUEUED,
                    (TryOn.status == JobStatus.PROCESSING) & TryOn.fal_request_id.is_(None)
                    & or_(TryOn.due_at.is_(None), TryOn.due_at <= now))).values(
                status=JobStatus.PROCESSING, attempt=attempt, fal_request_id=None,
                due_at=lease_end, updated_at=now, source_sha256=upload.sanitized_sha256)):
            return []
    hook = webhook_url(s.public_base_url, s.webhook_secret, job.id, attempt) \
        if s.public_base_url else None
    started = time.perf_counter()
    try:
        request_id = svc.fal.submit(arguments, hook, start_timeout=start_timeout)
    except FalFailure as failure:
        return _submit_failed(svc, job, attempt, failure, hook is not None, lease_end)
    submitted = svc.clock()
    metrics.FAL_SUBMITS.labels(result="accepted").inc()
    with svc.sessions.begin() as session:
        recorded = updated_rows(session, update(TryOn).where(
            TryOn.id == job.id, TryOn.attempt == attempt, TryOn.status == JobStatus.PROCESSING,
            TryOn.fal_request_id.is_(None)).values(
            fal_request_id=request_id, due_at=submitted + SILENT_AFTER,
            first_submitted_at=job.first_submitted_at or submitted,
            deadline_at=job.deadline_at or submitted + timedelta(seconds=s.fal_deadline_seconds)))
        audit.record(session, at=submitted, user_id=job.user_id, action="tryon.invoked",
                     subject_type="try_on", subject_id=job.id, attempt=attempt,
                     model=s.fal_model_id, fal_request_id=request_id,
                     source_upload_id=upload.id, source_sha256=upload.sanitized_sha256)
    log.info("job %s submitted to fal (attempt %d, %.0f ms)", job.id, attempt,
             (time.perf_counter() - started) * 1000)
    if not recorded:
        return _submission_orphaned(svc, job.id, attempt, request_id)
    # The deadline needs no message of its own: the reconciler finds every job past
    # it (docs/design.md, "Deadline").
    return [] if hook else [FollowUp(POLL_TRYON, (job.id, attempt), s.fal_poll_seconds)]


def _submit_failed(svc: Services, job: TryOn, attempt: int, failure: FalFailure,
                   webhooks: bool, lease_end: datetime) -> list[FollowUp]:
    log.warning("fal submit failed for job %s attempt %d: %s", job.id, attempt, failure)
    if failure.in_doubt and webhooks:
        # fal may have accepted it: its webhook will say so. Until the lease ends the
        # job waits for that; then it is taken over and submitted again.
        metrics.FAL_SUBMITS.labels(result="in_doubt").inc()
        metrics.FAL_FAILURES.labels(code=failure.code).inc()
        return [FollowUp(RUN_TRYON, (job.id,), seconds_until(lease_end, svc.clock()) + 0.5)]
    if failure.in_doubt:
        # Without webhooks nothing could ever finish that submission: send again.
        metrics.FAL_DOUBLE_SUBMISSIONS.labels(cause="no_webhook").inc()
    metrics.FAL_SUBMITS.labels(result="failed").inc()
    return after_failure(svc, job.id, attempt, failure)


def _submission_orphaned(svc: Services, job_id: str, attempt: int,
                         request_id: str) -> list[FollowUp]:
    """fal accepted our submission, but the claim had moved on before we could record
    it: taken over (our lease lapsed), finished, failed or deleted meanwhile."""
    job = load_job(svc, job_id)
    if job is not None and job.fal_request_id == request_id:
        return []  # its own webhook came first and recorded it (or finished the job)
    if job is not None and job.attempt > attempt:
        metrics.FAL_DOUBLE_SUBMISSIONS.labels(cause="lease_lapsed").inc()
    log.warning("job %s: attempt %d was accepted after its claim moved on; canceling it",
                job_id, attempt)
    cancel_quietly(svc.fal, request_id)
    return []
