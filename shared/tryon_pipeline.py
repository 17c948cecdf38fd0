"""The worker side of a try-on: wait for the upload, submit to fal, complete.

No worker slot is held while fal works. `run` submits and returns; completion
arrives by webhook (→ `complete`) or by a status check re-scheduled with a
countdown (→ `poll`). Every step is idempotent by the job's state and attempt
number, so duplicate deliveries, late webhooks and reconciler re-sends are
harmless. Each function returns the follow-up it wants (a task name, arguments
and a countdown), and the thin task layer sends it.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image
from sqlalchemy import select, update

from shared import audit, metrics
from shared.db import updated_rows
from shared.fal_gateway import FalFailure, classify_completion_error, parse_output
from shared.fal_webhooks import webhook_url
from shared.hairstyles import catalogue, compose_prompt
from shared.images import ImageRejected, sanitize
from shared.models import JobStatus, TryOn, Upload, UploadStatus
from shared.services import Services
from shared.tryons import RESULT_TAGS_KEPT, RESULT_TAGS_TEMPORARY, RUN_TASK, result_deadline

log = logging.getLogger(__name__)

POLL_TASK = "tryons.poll"
COMPLETE_TASK = "tryons.complete"
DEADLINE_TASK = "tryons.deadline"
UPLOAD_WAIT_STEP_SECONDS = 1.0
THUMBNAIL_SIZE = (256, 256)
RESULT_FORMATS = ["JPEG", "PNG", "WEBP"]
SIGNED_INPUT_TTL_SECONDS = 300


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


# --- run: wait for the upload, then one fal submission --------------------------

def run(svc: Services, job_id: str) -> list[FollowUp]:
    job = _load(svc, job_id)
    if job is None or job.status != JobStatus.QUEUED:
        return []  # submitted already (completion is on its way) or finished
    now = svc.clock()
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
        # Touch the row, so the reconciler sees this job is being looked after.
        with svc.sessions.begin() as session:
            session.execute(update(TryOn).where(TryOn.id == job.id).values(updated_at=now))
        return [FollowUp(RUN_TASK, (job.id,), UPLOAD_WAIT_STEP_SECONDS)]
    if job.deadline_at is not None and now >= job.deadline_at:
        return _time_out(svc, job)
    return _submit(svc, job, upload, now)


def _submit(svc: Services, job: TryOn, upload: Upload, now: datetime) -> list[FollowUp]:
    s = svc.settings
    attempt = job.attempt + 1
    first = job.first_submitted_at or now
    deadline = job.deadline_at or now + timedelta(seconds=s.fal_deadline_seconds)
    with svc.sessions.begin() as session:
        # Claim this attempt: of two concurrent runs exactly one submits, and a job
        # already processing is never submitted again from here.
        if not updated_rows(session, update(TryOn).where(
                TryOn.id == job.id, TryOn.attempt == job.attempt,
                TryOn.status == JobStatus.QUEUED).values(
                status=JobStatus.PROCESSING, attempt=attempt, fal_request_id=None,
                first_submitted_at=first, deadline_at=deadline, updated_at=now,
                source_sha256=upload.sanitized_sha256)):
            return []
    arguments = {
        "prompt": compose_prompt(catalogue()[job.hairstyle_id], job.user_prompt),
        # A fresh link for every attempt, never stored, gone within 5 minutes.
        "image_urls": [svc.storage.presign_get(s.uploads_bucket, str(upload.sanitized_key),
                                               expires_in=SIGNED_INPUT_TTL_SECONDS)],
        "num_images": 1,
        "output_format": "jpeg",
    }
    hook = (webhook_url(s.public_base_url, s.webhook_secret, job.id, attempt)
            if s.public_base_url else None)
    started = time.perf_counter()
    try:
        request_id = svc.fal.submit(arguments, hook)
    except FalFailure as failure:
        log.warning("fal submit failed for job %s attempt %d: %s", job.id, attempt, failure)
        return _after_failure(svc, job.id, attempt, failure)
    with svc.sessions.begin() as session:
        session.execute(update(TryOn).where(TryOn.id == job.id, TryOn.attempt == attempt)
                        .values(fal_request_id=request_id, updated_at=svc.clock()))
        audit.record(session, at=now, user_id=job.user_id, action="tryon.invoked",
                     subject_type="try_on", subject_id=job.id, attempt=attempt,
                     model=s.fal_model_id, fal_request_id=request_id,
                     source_upload_id=upload.id, source_sha256=upload.sanitized_sha256)
    log.info("job %s submitted to fal (attempt %d, %.0f ms)", job.id, attempt,
             (time.perf_counter() - started) * 1000)
    follow = [] if hook else [FollowUp(POLL_TASK, (job.id, attempt), s.fal_poll_seconds)]
    if attempt == 1:
        follow.append(FollowUp(DEADLINE_TASK, (job.id,),
                               max(0.0, (deadline - now).total_seconds()) + 1))
    return follow


def _after_failure(svc: Services, job_id: str, attempt: int,
                   failure: FalFailure) -> list[FollowUp]:
    """Retry a retriable failure with backoff (a new submission, a fresh URL), else fail."""
    job = _load(svc, job_id)
    if job is None or job.attempt != attempt or job.status != JobStatus.PROCESSING:
        return []
    s = svc.settings
    retries_left = attempt <= s.fal_max_retries
    if failure.retriable and retries_left:
        delay = (2 ** attempt) * s.fal_retry_base_seconds * random.uniform(0.75, 1.25)
        now = svc.clock()
        if job.deadline_at is not None and now + timedelta(seconds=delay) >= job.deadline_at:
            return _time_out(svc, job)
        with svc.sessions.begin() as session:
            requeued = updated_rows(session, update(TryOn).where(
                TryOn.id == job.id, TryOn.attempt == attempt,
                TryOn.status == JobStatus.PROCESSING).values(
                status=JobStatus.QUEUED, fal_request_id=None, updated_at=now))
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
        return {"ok": self.ok, "request_id": self.request_id, "output": self.output,
                "error_type": self.error_type}


def complete(svc: Services, job_id: str, attempt: int, completion: Completion) -> list[FollowUp]:
    job = _load(svc, job_id)
    if job is None or job.status != JobStatus.PROCESSING or job.attempt != attempt:
        log.info("ignoring completion for job %s attempt %d (stale or duplicate)", job_id, attempt)
        return []
    if job.fal_request_id and completion.request_id and job.fal_request_id != completion.request_id:
        return []
    if not completion.ok:
        return _after_failure(svc, job.id, attempt,
                              classify_completion_error(completion.error_type))
    try:
        try:
            urls = parse_output(completion.output).image_urls
        except FalFailure:
            # fal finished but the webhook carried no usable payload (payload_error):
            # the result is still at fal, ask for it.
            request_id = job.fal_request_id or completion.request_id
            if not request_id:
                raise
            urls = svc.fal.result(request_id).image_urls
        data = _download(svc, urls[0])
        stored = _store_result(svc, job, data)
    except FalFailure as failure:
        return _after_failure(svc, job.id, attempt, failure)
    _succeed(svc, job, attempt, stored)
    return []


@dataclass(frozen=True)
class _Stored:
    key: str
    thumb_key: str
    sha256: str
    width: int
    height: int


_http = threading.local()


def _media_client() -> httpx.Client:
    """One client per thread (built after the worker forked): building one loads the
    CA bundle, ~20-30 ms of CPU that would otherwise be paid on every result."""
    client = getattr(_http, "client", None)
    if client is None:
        client = _http.client = httpx.Client(timeout=30, follow_redirects=False)
    return client


def _download(svc: Services, url: str) -> bytes:
    """Only from fal's media hosts, over HTTPS, size-capped, no redirects."""
    parts = urlsplit(url)
    allowed = svc.settings.media_hosts
    host_ok = (parts.hostname or "").lower() in allowed or parts.netloc.lower() in allowed
    if parts.scheme != "https" or not host_ok:
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


def _store_result(svc: Services, job: TryOn, data: bytes) -> _Stored:
    try:
        with Image.open(io.BytesIO(data), formats=RESULT_FORMATS) as image:
            if image.width * image.height > svc.settings.max_image_pixels:
                raise FalFailure("fal.bad_result", retriable=False, error_type="too many pixels")
            image.load()
            clean = sanitize(image)
            thumb_image = image.convert("RGB")
            thumb_image.thumbnail(THUMBNAIL_SIZE)
            thumb = sanitize(thumb_image)
    except (OSError, SyntaxError, ValueError, ImageRejected, Image.DecompressionBombError):
        raise FalFailure("fal.bad_result", retriable=False, error_type="not an image") from None
    key = f"results/{job.user_id}/{job.id}.jpg"
    thumb_key = f"results/{job.user_id}/{job.id}_thumb.jpg"
    bucket = svc.settings.processed_bucket
    svc.storage.put_bytes(bucket, key, clean.data, content_type="image/jpeg",
                          tags=RESULT_TAGS_TEMPORARY)
    svc.storage.put_bytes(bucket, thumb_key, thumb.data, content_type="image/jpeg",
                          tags=RESULT_TAGS_TEMPORARY)
    return _Stored(key, thumb_key, clean.sha256, clean.width, clean.height)


def _succeed(svc: Services, job: TryOn, attempt: int, stored: _Stored) -> None:
    now = svc.clock()
    with svc.sessions.begin() as session:
        won = updated_rows(session, update(TryOn).where(
            TryOn.id == job.id, TryOn.attempt == attempt,
            TryOn.status == JobStatus.PROCESSING).values(
            status=JobStatus.SUCCEEDED, result_key=stored.key, thumbnail_key=stored.thumb_key,
            result_sha256=stored.sha256, result_width=stored.width, result_height=stored.height,
            completed_at=now, updated_at=now,
            delete_after=None if job.favorite else result_deadline(svc, now)))
        if not won:
            return
        if svc.settings.delete_selfie_after_job:
            # Schedules the selfie's deletion: the retention pass removes it next.
            session.execute(update(Upload).where(Upload.id == job.upload_id)
                            .values(delete_after=now))
        audit.record(session, at=now, user_id=job.user_id, action="tryon.succeeded",
                     subject_type="try_on", subject_id=job.id, attempt=attempt,
                     result_sha256=stored.sha256, source_sha256=job.source_sha256)
    fresh = _load(svc, job.id)
    if fresh is not None and fresh.favorite:
        # Favorited while it was running: its objects must not carry the 7-day tag.
        for key in (stored.key, stored.thumb_key):
            svc.storage.set_tags(svc.settings.processed_bucket, key, RESULT_TAGS_KEPT)
    metrics.FAL_SUCCESS.inc()
    if job.first_submitted_at:
        metrics.FAL_DURATION.observe((now - job.first_submitted_at).total_seconds())
    metrics.JOB_OUTCOMES.labels(outcome="succeeded").inc()
    log.info("job %s succeeded (attempt %d)", job.id, attempt)


def _fail(svc: Services, job: TryOn, code: str, *, attempt: int | None = None,
          detail: str = "") -> None:
    now = svc.clock()
    conditions = [TryOn.id == job.id,
                  TryOn.status.in_((JobStatus.QUEUED, JobStatus.PROCESSING))]
    if attempt is not None:
        conditions.append(TryOn.attempt == attempt)
    with svc.sessions.begin() as session:
        if not updated_rows(session, update(TryOn).where(*conditions).values(
                status=JobStatus.FAILED, error_code=code, completed_at=now, updated_at=now)):
            return
        audit.record(session, at=now, user_id=job.user_id, action="tryon.failed",
                     subject_type="try_on", subject_id=job.id, code=code,
                     attempt=attempt or job.attempt, source_sha256=job.source_sha256)
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
            completion = Completion(False, job.fal_request_id, error_type=status.error_type)
        else:
            output = svc.fal.result(job.fal_request_id)
            completion = Completion(True, job.fal_request_id,
                                    output={"images": [{"url": u} for u in output.image_urls]})
    except FalFailure as failure:
        # A status check that failed in transit is simply made again later.
        return again if failure.retriable else _after_failure(svc, job.id, attempt, failure)
    return complete(svc, job_id, attempt, completion)


def enforce_deadline(svc: Services, job_id: str) -> list[FollowUp]:
    job = _load(svc, job_id)
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.PROCESSING):
        return []
    if job.deadline_at is None:
        return []
    remaining = (job.deadline_at - svc.clock()).total_seconds()
    if remaining > 0:
        return [FollowUp(DEADLINE_TASK, (job_id,), remaining + 1)]
    return _time_out(svc, job)


def _time_out(svc: Services, job: TryOn) -> list[FollowUp]:
    if job.fal_request_id:
        cancel_quietly(svc, job.fal_request_id)
    _fail(svc, job, "fal.timeout")
    return []


def cancel_quietly(svc: Services, request_id: str) -> None:
    try:
        svc.fal.cancel(request_id)
    except FalFailure as failure:
        log.warning("could not cancel fal request: %s", failure)


# --- the beat's safety net --------------------------------------------------------

RECONCILE_BATCH = 500


# A claimed attempt with no request id after this long died between claim and
# submit (worker killed, a bug): it is handed back to the queue. The submit's own
# timeout (30 s) is well inside it, so a submit still in progress is not doubled.
CLAIM_ABANDONED_AFTER = timedelta(seconds=90)


def reconcile(svc: Services, *, queued_after: timedelta = timedelta(seconds=30),
              silent_after: timedelta = timedelta(seconds=30)) -> list[FollowUp]:
    """Jobs left queued (broker down at enqueue) are sent again; jobs processing
    without news are checked once; jobs past their deadline are failed."""
    now = svc.clock()
    follow: list[FollowUp] = []
    with svc.sessions() as session:
        stuck = list(session.scalars(select(TryOn).where(
            TryOn.status.in_((JobStatus.QUEUED, JobStatus.PROCESSING)),
            TryOn.updated_at < now - min(queued_after, silent_after))
            .order_by(TryOn.updated_at).limit(RECONCILE_BATCH)))
    for job in stuck:
        if job.deadline_at is not None and now >= job.deadline_at:
            follow += _time_out(svc, job)
        elif job.status == JobStatus.QUEUED and job.updated_at < now - queued_after:
            follow.append(FollowUp(RUN_TASK, (job.id,)))
        elif job.status == JobStatus.PROCESSING and not job.fal_request_id:
            if job.updated_at < now - CLAIM_ABANDONED_AFTER:
                with svc.sessions.begin() as session:
                    if updated_rows(session, update(TryOn).where(
                            TryOn.id == job.id, TryOn.attempt == job.attempt,
                            TryOn.status == JobStatus.PROCESSING,
                            TryOn.fal_request_id.is_(None)).values(
                            status=JobStatus.QUEUED, updated_at=now)):
                        follow.append(FollowUp(RUN_TASK, (job.id,)))
        elif job.status == JobStatus.PROCESSING and job.updated_at < now - silent_after:
            follow.append(FollowUp(POLL_TASK, (job.id, job.attempt, False)))
    return follow


# --- webhooks -----------------------------------------------------------------------

def completion_from_webhook(body: dict[str, Any]) -> Completion:
    """fal's webhook body: {request_id, status: OK|ERROR, payload, error?}."""
    request_id = body.get("request_id")
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
