"""The worker side of a try-on: wait for the upload, claim, submit to fal, complete.

No worker slot is held while fal works. `run` claims the job and makes one
submission; completion arrives by webhook (→ `complete`) or by a status check
re-scheduled with a countdown (→ `poll`). Each function returns the follow-up it
wants (a task name, arguments and a countdown), and the thin task layer sends it.

Nothing is lost when a worker dies, because no step relies on a message alone:

- A claim is a lease. `run` raises the attempt number and sets `due_at` to the end
  of the lease (FAL_IN_DOUBT_SECONDS); a claimant that died is taken over once the
  lease ended, by the redelivered task or by the reconciler, whichever comes first.
  The attempt number fences the old claimant: its writes name its attempt.
- A submission whose outcome is unknown (the claimant died, or the connection
  broke after the request went out) may have been accepted by fal. Its webhook
  names the job and attempt, so with webhooks the lease is also the time it is
  given to report before the job is submitted again; a result that still arrives
  for a superseded attempt is taken (and counted as a double submission).
- The deadline counts from the first submission fal accepted, and every submission
  carries fal's start timeout, so a request fal has not started in time is dropped
  unbilled instead of running after we gave up.
- Finishing takes the job's row lock: one finalizer writes the result objects and
  commits; a late or duplicate completion, a deletion or an erasure waits for it and
  then finds the job done or gone.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update

from shared.core import audit, metrics
from shared.core.db import updated_rows
from shared.fal.gateway import FalFailure, cancel_quietly, classify_completion_error, parse_output
from shared.fal.webhooks import webhook_url
from shared.models import JobStatus, TryOn, Upload, UploadStatus
from shared.services import Services
from shared.storage.s3 import StorageUnavailable
from shared.tryons import results as result_store
from shared.tryons.hairstyles import catalogue, compose_prompt
from shared.tryons.use_cases import RUN_TASK, result_deadline

log = logging.getLogger(__name__)

POLL_TASK = "tryons.poll"
COMPLETE_TASK = "tryons.complete"
DEADLINE_TASK = "tryons.deadline"
UPLOAD_WAIT_STEP_SECONDS = 1.0
SIGNED_INPUT_TTL_SECONDS = 300
# fal must have started a request this long before its input link expires (it
# still has to download the selfie), and fal refuses start timeouts of 1 s or less.
LINK_START_MARGIN_SECONDS = 30
MIN_START_TIMEOUT_SECONDS = 2.0
# A submitted job with no news this long is asked about (webhook lost, poller died).
SILENT_AFTER = timedelta(seconds=15)
# A queued job whose run was due this long ago has lost its message: send it again.
QUEUED_GRACE = timedelta(seconds=10)
# Claims taken over count as attempts too; this bounds a job that keeps killing
# its workers (fal failures have their own budget, FAL_MAX_RETRIES).
MAX_ATTEMPTS = 10
# ETA tasks may run a little early; a run this close to its due time goes ahead.
EARLY_TOLERANCE = timedelta(seconds=1)
IN_FLIGHT = (JobStatus.QUEUED, JobStatus.PROCESSING)


@dataclass(frozen=True)
class FollowUp:
    task: str
    args: tuple[Any, ...]
    countdown: float = 0.0


def send(svc: Services, follow_ups: list[FollowUp]) -> int:
    """Send the follow-ups a step asked for (the task layer's only job)."""
    for f in follow_ups:
        svc.dispatch(f.task, *f.args, countdown=f.countdown or None)
    return len(follow_ups)


def _load(svc: Services, job_id: str) -> TryOn | None:
    with svc.sessions() as session:
        return session.get(TryOn, job_id)


def _seconds_until(moment: datetime, now: datetime) -> float:
    return max(0.0, (moment - now).total_seconds())


# --- run: wait for the upload, claim, one fal submission ----------------------------

def run(svc: Services, job_id: str) -> list[FollowUp]:
    job = _load(svc, job_id)
    if job is None or job.status not in IN_FLIGHT:
        return []
    now = svc.clock()
    if job.status == JobStatus.PROCESSING:
        if job.fal_request_id:
            return []  # submitted: its completion is on the way
        if job.due_at is not None and now < job.due_at:
            # Claimed, and the lease still runs: its claimant may be alive. Come back
            # when it ends, in case the claimant died (this is a redelivered task).
            return [FollowUp(RUN_TASK, (job.id,), _seconds_until(job.due_at, now) + 0.5)]
        metrics.TRYON_TAKEOVERS.inc()
        log.warning("job %s: the claim of attempt %d lapsed; taking it over", job.id, job.attempt)
    elif job.due_at is not None and now < job.due_at - EARLY_TOLERANCE:
        return [FollowUp(RUN_TASK, (job.id,), _seconds_until(job.due_at, now))]  # backoff
    with svc.sessions() as session:
        upload = session.get(Upload, job.upload_id)
    if upload is None or upload.status in (UploadStatus.DELETED, UploadStatus.EXPIRED):
        _fail(svc, job, "upload.not_found")
        return []
    if upload.status == UploadStatus.REJECTED:
        _fail(svc, job, "upload.rejected")
        return []
    if upload.status != UploadStatus.READY:
        if now >= job.created_at + timedelta(seconds=svc.settings.upload_wait_seconds):
            _fail(svc, job, "upload.not_ready")
            return []
        with svc.sessions.begin() as session:
            session.execute(update(TryOn).where(TryOn.id == job.id, TryOn.status == JobStatus.QUEUED)
                            .values(due_at=now + timedelta(seconds=UPLOAD_WAIT_STEP_SECONDS)))
        return [FollowUp(RUN_TASK, (job.id,), UPLOAD_WAIT_STEP_SECONDS)]
    if job.deadline_at is not None and now >= job.deadline_at:
        return _time_out(svc, job)
    if job.attempt >= MAX_ATTEMPTS:
        _fail(svc, job, "fal.unavailable", detail="too many attempts")
        return []
    return _submit(svc, job, upload, now)


def _start_timeout(svc: Services, job: TryOn, now: datetime) -> float:
    """Time left until the deadline (all of it before the first accepted submit),
    bounded by what the signed input link leaves."""
    left = (_seconds_until(job.deadline_at, now) if job.deadline_at is not None
            else float(svc.settings.fal_deadline_seconds))
    return max(MIN_START_TIMEOUT_SECONDS,
               min(left, SIGNED_INPUT_TTL_SECONDS - LINK_START_MARGIN_SECONDS))


def _submit(svc: Services, job: TryOn, upload: Upload, now: datetime) -> list[FollowUp]:
    s = svc.settings
    attempt = job.attempt + 1
    arguments = {
        "prompt": compose_prompt(catalogue()[job.hairstyle_id], job.user_prompt),
        # A fresh link for every attempt, never stored, gone within 5 minutes. Signed
        # before the claim, so nothing slow stands between the claim and the send.
        "image_urls": [svc.storage.presign_get(s.uploads_bucket, str(upload.sanitized_key),
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
    follow = [] if hook else [FollowUp(POLL_TASK, (job.id, attempt), s.fal_poll_seconds)]
    if job.deadline_at is None:
        follow.append(FollowUp(DEADLINE_TASK, (job.id,), s.fal_deadline_seconds + 1))
    return follow


def _submit_failed(svc: Services, job: TryOn, attempt: int, failure: FalFailure,
                   webhooks: bool, lease_end: datetime) -> list[FollowUp]:
    log.warning("fal submit failed for job %s attempt %d: %s", job.id, attempt, failure)
    if failure.in_doubt and webhooks:
        # fal may have accepted it: its webhook will say so. Until the lease ends the
        # job waits for that; then it is taken over and submitted again.
        metrics.FAL_SUBMITS.labels(result="in_doubt").inc()
        return [FollowUp(RUN_TASK, (job.id,), _seconds_until(lease_end, svc.clock()) + 0.5)]
    if failure.in_doubt:
        # Without webhooks nothing could ever finish that submission: send again.
        metrics.FAL_DOUBLE_SUBMISSIONS.labels(cause="no_webhook").inc()
    metrics.FAL_SUBMITS.labels(result="failed").inc()
    return _after_failure(svc, job.id, attempt, failure)


def _submission_orphaned(svc: Services, job_id: str, attempt: int,
                         request_id: str) -> list[FollowUp]:
    """fal accepted our submission, but the claim had moved on before we could record
    it: taken over (our lease lapsed), finished, failed or deleted meanwhile."""
    job = _load(svc, job_id)
    if job is not None and job.fal_request_id == request_id:
        return []  # its own webhook came first and recorded it (or finished the job)
    if job is not None and job.attempt > attempt:
        metrics.FAL_DOUBLE_SUBMISSIONS.labels(cause="lease_lapsed").inc()
    log.warning("job %s: attempt %d was accepted after its claim moved on; canceling it",
                job_id, attempt)
    cancel_quietly(svc.fal, request_id)
    return []


def _after_failure(svc: Services, job_id: str, attempt: int,
                   failure: FalFailure) -> list[FollowUp]:
    """Retry a retriable failure with backoff (a new submission, a fresh URL), else fail."""
    job = _load(svc, job_id)
    if job is None or job.attempt != attempt or job.status != JobStatus.PROCESSING:
        return []
    s = svc.settings
    failures = job.fal_failures + 1
    if failure.retriable and failures <= s.fal_max_retries:
        delay = (2 ** failures) * s.fal_retry_base_seconds * random.uniform(0.75, 1.25)
        now = svc.clock()
        if job.deadline_at is not None and now + timedelta(seconds=delay) >= job.deadline_at:
            return _time_out(svc, job)
        with svc.sessions.begin() as session:
            requeued = updated_rows(session, update(TryOn).where(
                TryOn.id == job.id, TryOn.attempt == attempt,
                TryOn.status == JobStatus.PROCESSING).values(
                status=JobStatus.QUEUED, fal_request_id=None, fal_failures=failures,
                due_at=now + timedelta(seconds=delay), updated_at=now))
        return [FollowUp(RUN_TASK, (job.id,), delay)] if requeued else []
    _fail(svc, job, failure.code, attempt=attempt, detail=str(failure))
    return []


# --- completion ---------------------------------------------------------------

@dataclass(frozen=True)
class Completion:
    """What fal reported for one attempt (from a webhook or a status check)."""

    ok: bool
    request_id: str | None
    output: Any = None
    error_type: str | None = None

    def as_task_args(self) -> dict[str, Any]:
        """Without the output: its image links are public URLs of a user's face, and
        task arguments show in Flower and in failure logs. The worker fetches the
        result from fal by its request id instead."""
        return {"ok": self.ok, "request_id": self.request_id, "error_type": self.error_type}


def complete(svc: Services, job_id: str, attempt: int, completion: Completion) -> list[FollowUp]:
    job = _load(svc, job_id)
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
        return _after_failure(svc, job.id, attempt, classify_completion_error(completion.error_type))
    request_id = completion.request_id or (None if superseded else job.fal_request_id)
    try:
        try:
            urls = parse_output(completion.output).image_urls
        except FalFailure:
            # fal finished but the webhook carried no usable payload (payload_error):
            # the result is still at fal, ask for it.
            if not request_id:
                raise
            urls = svc.fal.result(request_id).image_urls
        rendered = result_store.render(_download(svc, urls[0]), svc.settings.max_image_pixels)
    except result_store.NotAnImage as bad:
        failure = FalFailure("fal.bad_result", retriable=False, error_type=bad.detail)
        return [] if superseded else _after_failure(svc, job.id, attempt, failure)
    except FalFailure as failure:
        if superseded:
            return []
        if failure.retriable and request_id:
            # The result is there, we could not fetch it: ask again, do not resubmit.
            return [FollowUp(POLL_TASK, (job.id, attempt, False), svc.settings.fal_poll_seconds)]
        return _after_failure(svc, job.id, attempt, failure)
    if _succeed(svc, job.id, attempt, rendered, request_id) and superseded:
        # A submission presumed lost (its claimant died) finished after all, while a
        # later attempt was sent: that one is not needed any more.
        metrics.FAL_DOUBLE_SUBMISSIONS.labels(cause="superseded_finished").inc()
        if job.fal_request_id:
            cancel_quietly(svc.fal, job.fal_request_id)
    return []


_http = threading.local()


def _media_client() -> httpx.Client:
    """One client per thread (built after the worker forked): building one loads the
    CA bundle, ~20-30 ms of CPU that would otherwise be paid on every result."""
    client = getattr(_http, "client", None)
    if client is None:
        client = _http.client = httpx.Client(timeout=30, follow_redirects=False)
    return client


def _download(svc: Services, url: str) -> bytes:
    """Only from fal's media hosts (shared/core/media_hosts.py), size-capped, no redirects."""
    if not svc.settings.media_hosts.allows(url):
        raise FalFailure("fal.bad_result", retriable=False, error_type="host not allowed")
    limit = svc.settings.result_max_bytes
    try:
        with _media_client().stream("GET", url) as response:
            if response.status_code != 200:
                raise FalFailure("fal.bad_result", retriable=response.status_code >= 500,
                                 status=response.status_code)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise FalFailure("fal.bad_result", retriable=False, error_type="too large")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise FalFailure("fal.bad_result", retriable=True, error_type=type(exc).__name__) from None
    return b"".join(chunks)


def _succeed(svc: Services, job_id: str, attempt: int, rendered: result_store.Rendered,
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
        key, thumb_key = result_store.write(svc, job, rendered)
        now = svc.clock()
        clean = rendered.result
        if not updated_rows(session, update(TryOn).where(
                TryOn.id == job.id, TryOn.status == JobStatus.PROCESSING).values(
                status=JobStatus.SUCCEEDED, result_key=key, thumbnail_key=thumb_key,
                result_sha256=clean.sha256, result_width=clean.width, result_height=clean.height,
                completed_at=now, updated_at=now, due_at=None,
                fal_request_id=request_id or job.fal_request_id,
                delete_after=None if job.favorite else result_deadline(svc, stored_at),
                result_tags=None if job.favorite else result_store.TEMPORARY)):
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
        _sync_tags_quietly(svc, job_id)  # favorited while it ran: tag it kept now
    metrics.FAL_SUCCESS.inc()
    if first_submitted_at:
        metrics.FAL_DURATION.observe((now - first_submitted_at).total_seconds())
    metrics.JOB_OUTCOMES.labels(outcome="succeeded").inc()
    log.info("job %s succeeded (attempt %d)", job_id, attempt)
    return True


def _sync_tags_quietly(svc: Services, job_id: str) -> None:
    try:
        result_store.sync_tags(svc, job_id)
    except Exception as exc:  # noqa: BLE001 - the row says what is wanted; the beat repairs
        log.warning("re-tagging job %s failed (%s); left for the beat", job_id, type(exc).__name__)


def _fail(svc: Services, job: TryOn, code: str, *, attempt: int | None = None,
          detail: str = "") -> None:
    now = svc.clock()
    conditions = [TryOn.id == job.id, TryOn.status.in_(IN_FLIGHT)]
    if attempt is not None:
        conditions.append(TryOn.attempt == attempt)
    with svc.sessions.begin() as session:
        # A failed job has nothing to keep, favorite or not: it goes like a result.
        if not updated_rows(session, update(TryOn).where(*conditions).values(
                status=JobStatus.FAILED, error_code=code, completed_at=now, updated_at=now,
                due_at=None, delete_after=result_deadline(svc, now))):
            return
        audit.record(session, at=now, user_id=job.user_id, action="tryon.failed",
                     subject_type="try_on", subject_id=job.id, code=code,
                     attempt=attempt or job.attempt, source_sha256=job.source_sha256)
    try:
        # A finalizer that died after writing leaves objects no row records.
        result_store.delete_objects(svc, job.user_id, job.id)
    except StorageUnavailable:
        log.warning("job %s: could not delete partial results; the orphan sweep will", job.id)
    metrics.JOB_OUTCOMES.labels(outcome="failed").inc()
    log.warning("job %s failed: %s %s", job.id, code, detail)


# --- polling and the deadline ---------------------------------------------------

def poll(svc: Services, job_id: str, attempt: int, *, reschedule: bool = True) -> list[FollowUp]:
    """One status check; completion handled inline, else checked again later."""
    job = _load(svc, job_id)
    if job is None or job.status != JobStatus.PROCESSING or job.attempt != attempt:
        return []
    again = [FollowUp(POLL_TASK, (job_id, attempt), svc.settings.fal_poll_seconds)] \
        if reschedule else []
    if not job.fal_request_id:
        return again
    try:
        status = svc.fal.status(job.fal_request_id)
        if not status.completed:
            return again
        if status.error or status.error_type:
            return _after_failure(svc, job.id, attempt, _failure_of(svc, job.fal_request_id,
                                                                   status.error_type))
        output = svc.fal.result(job.fal_request_id)
    except FalFailure as failure:
        # A check that failed in transit is simply made again later.
        return again if failure.retriable else _after_failure(svc, job.id, attempt, failure)
    completion = Completion(True, job.fal_request_id,
                            output={"images": [{"url": u} for u in output.image_urls]})
    return complete(svc, job_id, attempt, completion)


def _failure_of(svc: Services, request_id: str, error_type: str | None) -> FalFailure:
    """Why a request fal COMPLETED with an error failed: the result body carries the
    model's error detail (a type the status does not name), so it is asked for."""
    try:
        svc.fal.result(request_id)
    except FalFailure as failure:
        if failure.status is not None:  # fal answered: its error, classified
            return failure
    return classify_completion_error(error_type)


def enforce_deadline(svc: Services, job_id: str) -> list[FollowUp]:
    job = _load(svc, job_id)
    if job is None or job.status not in IN_FLIGHT or job.deadline_at is None:
        return []
    remaining = (job.deadline_at - svc.clock()).total_seconds()
    if remaining > 0:
        return [FollowUp(DEADLINE_TASK, (job_id,), remaining + 1)]
    return _time_out(svc, job)


def _time_out(svc: Services, job: TryOn) -> list[FollowUp]:
    if job.fal_request_id:
        cancel_quietly(svc.fal, job.fal_request_id)
    _fail(svc, job, "fal.timeout")
    return []


# --- the beat's safety net --------------------------------------------------------

RECONCILE_BATCH = 500


def reconcile(svc: Services) -> list[FollowUp]:
    """Every job whose `due_at` passed with nobody acting on it: a queued job's run is
    sent again, a lapsed claim is handed to `run` (which takes it over), a submitted
    job is asked about, and a job past its deadline is failed."""
    now = svc.clock()
    with svc.sessions() as session:
        jobs = list(session.scalars(select(TryOn).where(
            TryOn.status.in_(IN_FLIGHT),
            or_(TryOn.due_at.is_(None), TryOn.due_at < now, TryOn.deadline_at < now))
            .order_by(TryOn.due_at).limit(RECONCILE_BATCH)))
    follow: list[FollowUp] = []
    resent: list[str] = []
    asked: list[str] = []
    for job in jobs:
        if job.deadline_at is not None and now >= job.deadline_at:
            follow += _time_out(svc, job)
        elif job.status == JobStatus.QUEUED:
            if job.due_at is None or job.due_at < now - QUEUED_GRACE:
                follow.append(FollowUp(RUN_TASK, (job.id,)))
                resent.append(job.id)
        elif not job.fal_request_id:
            follow.append(FollowUp(RUN_TASK, (job.id,)))  # the claim's lease ended
        else:
            follow.append(FollowUp(POLL_TASK, (job.id, job.attempt, False)))
            asked.append(job.id)
    # Marked, so that the next pass waits for these messages instead of doubling them.
    with svc.sessions.begin() as session:
        if resent:
            session.execute(update(TryOn).where(TryOn.id.in_(resent),
                                                TryOn.status == JobStatus.QUEUED).values(due_at=now))
        if asked:
            session.execute(update(TryOn).where(TryOn.id.in_(asked),
                                                TryOn.status == JobStatus.PROCESSING)
                            .values(due_at=now + SILENT_AFTER))
    return follow


# --- webhooks -----------------------------------------------------------------------

def completion_from_webhook(body: dict[str, Any], signed_request_id: str | None = None
                            ) -> Completion:
    """fal's webhook body: {request_id, gateway_request_id?, status: OK|ERROR, payload,
    error?}; the request id is the signed header's when there is one."""
    request_id = signed_request_id or body.get("request_id")
    payload = body.get("payload")
    if body.get("status") == "OK":
        return Completion(True, request_id, output=payload)
    error_type = None
    if isinstance(payload, dict):
        detail = payload.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            error_type = detail[0].get("type")
        error_type = error_type or payload.get("error_type")
    return Completion(False, request_id, error_type=error_type or body.get("error_type"))
