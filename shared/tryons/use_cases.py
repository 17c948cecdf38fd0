"""Try-on use cases on the API side: start, read, list, favorite, delete.

The worker side: shared/tryons/submission.py (claim, submit), completion.py
(webhooks, polls, results), reconcile.py (the beat's safety net).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, literal, select, update
from sqlalchemy.exc import IntegrityError

from shared.access import daily_quota
from shared.access.erasure_lock import refuse_while_erasing
from shared.core import audit
from shared.core.db import updated_rows
from shared.core.errors import AppError
from shared.core.ownership import get_owned, owned, page_owned
from shared.core.pagination import Page
from shared.core.task_names import RUN_TRYON
from shared.models import JobStatus, TryOn, Upload, UploadStatus, UTCDateTime
from shared.services import Services
from shared.storage.keys import parse_raw_key
from shared.tryons.hairstyles import catalogue, compose_prompt
from shared.tryons.removal import erase_job
from shared.tryons.retention import IDEMPOTENCY_WINDOW, release_expired_key, result_deadline
from shared.tryons.state import sync_tags_quietly

log = logging.getLogger(__name__)



def start(svc: Services, user_id: str, *, upload_id: str | None, key: str | None,
          hairstyle_id: str, prompt: str | None, locale: str,
          idempotency_key: str | None = None, daily_limit: int | None = None) -> TryOn:
    """Commit the job, then send it; a broker outage leaves it for the reconciler.

    The daily quota (`daily_limit` try-ons) is counted in the transaction that
    commits the job: a refused request, or one whose write fails, costs nothing.
    With an `idempotency_key` (hashed), a second job for the same key is never
    created within its window: the existing one is returned.
    """
    if hairstyle_id not in catalogue():
        raise AppError("tryon.unknown_hairstyle")
    upload = _source_upload(svc, user_id, upload_id, key)
    if upload.status == UploadStatus.REJECTED:
        raise AppError("upload.rejected")
    if upload.status == UploadStatus.PENDING:
        raise AppError("upload.not_ready")
    if upload.status not in (UploadStatus.VALIDATING, UploadStatus.READY):
        raise AppError("upload.not_found")
    key_hash = hashlib.sha256(idempotency_key.encode()).hexdigest() if idempotency_key else None
    if key_hash and (existing := _by_idempotency_key(svc, user_id, key_hash)):
        return existing
    now = svc.clock()
    # Due at once: if its message is lost, the reconciler sends it again.
    job = TryOn(id=str(uuid.uuid4()), user_id=user_id, upload_id=upload.id,
                hairstyle_id=hairstyle_id, user_prompt=prompt, locale=locale,
                # Run with the style as it is now, whatever the catalogue becomes.
                composed_prompt=compose_prompt(catalogue()[hairstyle_id], prompt),
                status=JobStatus.QUEUED, created_at=now, updated_at=now, due_at=now, attempt=0,
                fal_failures=0, favorite=False, idempotency_key=key_hash)
    try:
        with svc.sessions.begin() as session:
            refuse_while_erasing(session, user_id)
            if key_hash:
                release_expired_key(session, user_id, key_hash, now)
            if daily_limit is not None:
                daily_quota.consume(session, user_id=user_id, kind=daily_quota.TRYON,
                                    limit=daily_limit, now=now)
            session.add(job)
            audit.record(session, at=now, user_id=user_id, action="tryon.created",
                         subject_type="try_on", subject_id=job.id, upload_id=upload.id,
                         hairstyle_id=hairstyle_id)
    except IntegrityError:
        # The same key won a race a moment ago: that job is the answer.
        existing = _by_idempotency_key(svc, user_id, key_hash) if key_hash else None
        if existing is None:
            raise
        return existing
    svc.dispatch(RUN_TRYON, job.id)
    return job


def _by_idempotency_key(svc: Services, user_id: str, key_hash: str) -> TryOn | None:
    with svc.sessions() as session:
        return session.scalars(select(TryOn).where(
            TryOn.user_id == user_id, TryOn.idempotency_key == key_hash,
            TryOn.created_at >= svc.clock() - IDEMPOTENCY_WINDOW)).one_or_none()


def _source_upload(svc: Services, user_id: str, upload_id: str | None,
                   key: str | None) -> Upload:
    with svc.sessions() as session:
        if upload_id:
            return owned(session, Upload, upload_id, user_id, "upload.not_found")
        if key:
            parsed = parse_raw_key(key)
            if parsed is None or parsed[0] != user_id:
                raise AppError("upload.forbidden_key")
            upload = session.scalars(select(Upload).where(Upload.key == key)).one_or_none()
        else:
            raise AppError("request.invalid", detail="key or uploadId required")
    if upload is None or upload.user_id != user_id:
        raise AppError("upload.not_found")
    return upload


@dataclass(frozen=True)
class ResultLinks:
    result_url: str
    thumbnail_url: str | None
    expires_at: datetime


def result_links(svc: Services, job: TryOn) -> ResultLinks | None:
    """Fresh signed GETs of a succeeded job's result and thumbnail."""
    if job.status != JobStatus.SUCCEEDED or not job.result_key:
        return None
    ttl = svc.settings.result_url_ttl_seconds
    store = svc.result_store
    return ResultLinks(
        result_url=store.presign_get(job.result_key, expires_in=ttl),
        thumbnail_url=store.presign_get(job.thumbnail_key, expires_in=ttl)
        if job.thumbnail_key else None,
        expires_at=svc.clock() + timedelta(seconds=ttl))


def get(svc: Services, user_id: str, job_id: str) -> TryOn:
    return get_owned(svc.sessions, TryOn, job_id, user_id, "tryon.not_found")


def list_for_user(svc: Services, user_id: str, *, limit: int, cursor: str | None,
                  status: str | None) -> Page[TryOn]:
    conditions = [TryOn.status == status] if status else []
    return page_owned(svc.sessions, TryOn, user_id, *conditions, limit=limit, cursor=cursor)


def set_favorite(svc: Services, user_id: str, job_id: str, favorite: bool) -> TryOn:
    """A favorite is kept past the default retention: no deleteAfter, objects
    tagged `kept` (the processed bucket's lifecycle rule skips them). Un-favoriting
    starts the default retention again from now.

    The row is changed first and is the truth; the objects' tag follows it right
    away, or, if storage fails now, at the beat's next pass (shared/tryons/results.py)."""
    job = get(svc, user_id, job_id)
    if job.status == JobStatus.FAILED:
        raise AppError("tryon.no_result")
    now = svc.clock()
    with svc.sessions.begin() as session:
        changed = updated_rows(session, update(TryOn).where(
            TryOn.id == job.id, TryOn.status != JobStatus.FAILED,
            TryOn.favorite == (not favorite)).values(
            favorite=favorite, updated_at=now, result_tags=None,
            # In flight, the deadline is set when the job finishes.
            delete_after=None if favorite else case(
                (TryOn.status == JobStatus.SUCCEEDED,
                 literal(result_deadline(svc, now), UTCDateTime())), else_=None)))
        if changed:
            audit.record(session, at=now, user_id=user_id, subject_type="try_on",
                         subject_id=job.id,
                         action="tryon.favorited" if favorite else "tryon.unfavorited")
    sync_tags_quietly(svc, job.id)
    return get(svc, user_id, job_id)


def remove(svc: Services, user_id: str, job_id: str, *, reason: str = "user") -> None:
    """Delete the result objects and the job; a job in flight has its fal request canceled."""
    job = get(svc, user_id, job_id)
    erase_job(svc, job.id, reason=reason)


