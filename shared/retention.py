"""What the beat schedule does for uploads: re-send stuck validations, purge raw
objects whose URL has expired, expire never-confirmed uploads, delete selfies
past retention, and remove objects under `uploads/` that no live record
accounts for. Each pass is bounded (BATCH) and idempotent, so an overlapping or
repeated run does no harm.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update

from shared import audit
from shared.db import updated_rows
from shared.models import Upload, UploadStatus
from shared.services import Services
from shared.uploads import VALIDATE_TASK, erase_objects

log = logging.getLogger(__name__)

BATCH = 500
# A never-confirmed upload is kept this long after its URL expired, so an app
# that uploaded and then lost connectivity can still confirm.
UNCONFIRMED_GRACE = timedelta(hours=1)
DONE_STATES = (UploadStatus.READY, UploadStatus.REJECTED, UploadStatus.DELETED,
               UploadStatus.EXPIRED)


# Validation that has not finished this long after confirm never will (a file that
# crashes the worker, a hook that keeps failing): it is rejected, and its bytes go.
VALIDATION_GIVE_UP = timedelta(hours=1)


def resend_stale_validations(svc: Services) -> int:
    now = svc.clock()
    cutoff = now - timedelta(seconds=svc.settings.validation_stale_seconds)
    _give_up_on_validation(svc, now)
    with svc.sessions() as session:
        ids = list(session.scalars(
            select(Upload.id).where(Upload.status == UploadStatus.VALIDATING,
                                    Upload.confirmed_at < cutoff)
            .order_by(Upload.confirmed_at).limit(BATCH)))
    sent = sum(1 for upload_id in ids if svc.dispatch(VALIDATE_TASK, upload_id))
    if ids:
        log.info("re-sent %d of %d stale validations", sent, len(ids))
    return sent


def _give_up_on_validation(svc: Services, now: datetime) -> None:
    from shared.validation import Rejection, reject

    with svc.sessions() as session:
        rows = list(session.scalars(select(Upload).where(
            Upload.status == UploadStatus.VALIDATING,
            Upload.confirmed_at < now - VALIDATION_GIVE_UP).limit(BATCH)))
    for upload in rows:
        reject(svc, upload, Rejection("upload.validation_failed", "gave up after retries"))


def purge_raw_objects(svc: Services) -> int:
    """Delete raw objects (and placeholders) once their upload URL has expired."""
    now = svc.clock()
    margin = timedelta(seconds=svc.settings.raw_purge_margin_seconds)
    with svc.sessions() as session:
        rows = list(session.scalars(
            select(Upload).where(Upload.raw_purged_at.is_(None),
                                 Upload.status.in_(DONE_STATES),
                                 Upload.url_expires_at < now - margin).limit(BATCH)))
    for upload in rows:
        svc.storage.delete(svc.settings.uploads_bucket, upload.key)
        with svc.sessions.begin() as session:
            session.execute(update(Upload).where(Upload.id == upload.id)
                            .values(raw_purged_at=now))
    return len(rows)


def expire_unconfirmed(svc: Services) -> int:
    now = svc.clock()
    with svc.sessions() as session:
        rows = list(session.scalars(
            select(Upload).where(Upload.status == UploadStatus.PENDING,
                                 Upload.url_expires_at < now - UNCONFIRMED_GRACE).limit(BATCH)))
    for upload in rows:
        svc.storage.delete(svc.settings.uploads_bucket, upload.key)
        with svc.sessions.begin() as session:
            done = updated_rows(session, update(Upload).where(
                Upload.id == upload.id, Upload.status == UploadStatus.PENDING).values(
                status=UploadStatus.EXPIRED, raw_purged_at=now))
            if done:
                audit.record(session, at=now, user_id=upload.user_id, action="upload.expired",
                             subject_type="upload", subject_id=upload.id)
    return len(rows)


def delete_past_retention(svc: Services) -> int:
    """Selfies past their deadline, unless a try-on in flight still needs them
    (they go at the next pass after it finished)."""
    from shared.models import JobStatus, TryOn

    now = svc.clock()
    in_flight = select(TryOn.id).where(
        TryOn.upload_id == Upload.id,
        TryOn.status.in_((JobStatus.QUEUED, JobStatus.PROCESSING))).exists()
    with svc.sessions() as session:
        rows = list(session.scalars(
            select(Upload).where(Upload.status.in_((UploadStatus.READY, UploadStatus.REJECTED,
                                                    UploadStatus.VALIDATING)),
                                 Upload.delete_after < now, ~in_flight).limit(BATCH)))
    for upload in rows:
        erase_objects(svc, upload, now)
        with svc.sessions.begin() as session:
            session.execute(update(Upload).where(Upload.id == upload.id).values(
                status=UploadStatus.DELETED, deleted_at=now))
            audit.record(session, at=now, user_id=upload.user_id, action="upload.deleted",
                         subject_type="upload", subject_id=upload.id, reason="retention")
    return len(rows)


def remove_orphans(svc: Services) -> int:
    """Objects under uploads/ or sanitized/ that no live record accounts for.

    Only objects older than the longest URL lifetime plus the margin are looked
    at: a younger object may belong to an issuance being written right now.
    """
    s = svc.settings
    now = svc.clock()
    min_age = timedelta(seconds=s.presign_ttl_seconds + s.raw_purge_margin_seconds)
    removed = 0
    for prefix, column in (("uploads/", Upload.key), ("sanitized/", Upload.sanitized_key)):
        candidates = [k for k, modified in svc.storage.list_keys(s.uploads_bucket, prefix)
                      if modified < now - min_age]
        for chunk_start in range(0, len(candidates), BATCH):
            chunk = candidates[chunk_start:chunk_start + BATCH]
            with svc.sessions() as session:
                live = set(session.scalars(select(column).where(
                    column.in_(chunk), Upload.status.in_(_live_states(prefix)),
                    *( [Upload.raw_purged_at.is_(None)] if prefix == "uploads/" else []))))
            for key in chunk:
                if key not in live:
                    svc.storage.delete(s.uploads_bucket, key)
                    removed += 1
    removed += _remove_orphan_results(svc, now, min_age)
    if removed:
        log.info("removed %d orphaned objects", removed)
    return removed


def _remove_orphan_results(svc: Services, now: datetime, min_age: timedelta) -> int:
    """Results whose job is gone (deleted while its result was being stored)."""
    from shared.models import TryOn

    bucket = svc.settings.processed_bucket
    candidates = [k for k, modified in svc.storage.list_keys(bucket, "results/")
                  if modified < now - min_age]
    removed = 0
    for start in range(0, len(candidates), BATCH):
        chunk = candidates[start:start + BATCH]
        with svc.sessions() as session:
            live = set(session.scalars(select(TryOn.result_key).where(TryOn.result_key.in_(chunk))))
            live |= set(session.scalars(select(TryOn.thumbnail_key).where(
                TryOn.thumbnail_key.in_(chunk))))
        for key in chunk:
            if key not in live:
                svc.storage.delete(bucket, key)
                removed += 1
    return removed


def _live_states(prefix: str) -> tuple[str, ...]:
    if prefix == "uploads/":
        # Raw objects legitimately exist until purged, whatever the status.
        return (UploadStatus.PENDING, UploadStatus.VALIDATING, *DONE_STATES)
    return (UploadStatus.READY,)


def delete_expired_results(svc: Services) -> int:
    """Results past their retention (never favorites: their deleteAfter is empty)."""
    from shared.models import TryOn
    from shared.tryons import erase_job

    now = svc.clock()
    with svc.sessions() as session:
        jobs = list(session.scalars(select(TryOn).where(
            TryOn.favorite.is_(False), TryOn.delete_after.is_not(None),
            TryOn.delete_after < now).limit(BATCH)))
    for job in jobs:
        erase_job(svc, job, reason="retention")
    return len(jobs)
