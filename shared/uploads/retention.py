"""What the beat does for uploads: re-send validations whose lease ended, purge
raw objects whose URL has expired, expire never-confirmed uploads, delete selfies
past their deadline and purge dead rows (try-ons: shared/tryons/retention.py;
objects no record accounts for: shared/privacy/orphans.py). Each pass is bounded
(BATCH) and idempotent, so an overlapping or repeated run does no harm.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update

from shared.core import audit
from shared.core.db import execute_dml, updated_rows
from shared.core.task_names import VALIDATE_UPLOAD
from shared.models import JobStatus, TryOn, Upload, UploadStatus
from shared.services import Services
from shared.uploads.use_cases import delete_upload
from shared.uploads.validation import give_up

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
    """Validations whose lease ended (their worker died, their message was lost, or
    none was ever sent) are sent again; one whose lease still runs, or whose message
    is still in the broker (a backlog, a live worker's hands), is left alone."""
    _give_up_on_validation(svc, svc.clock())
    if not _lapsed_validations(svc, svc.clock()):
        return 0  # the usual pass: the broker is not read
    # Read before the rows: a message taken meanwhile shows in the row's lease.
    waiting = (svc.messages_in_broker((VALIDATE_UPLOAD,)) or {}).get(VALIDATE_UPLOAD, set())
    now = svc.clock()
    ids = [upload_id for upload_id in _lapsed_validations(svc, now) if upload_id not in waiting]
    if not ids:
        return 0
    with svc.sessions.begin() as session:
        # The lapsed claim is cleared (its worker is gone; a new delivery may claim),
        # and the next re-send waits for this one.
        execute_dml(session, update(Upload).where(
            Upload.id.in_(ids), Upload.status == UploadStatus.VALIDATING,
            or_(Upload.validation_lease_until.is_(None), Upload.validation_lease_until < now))
            .values(validation_owner=None, validation_lease_until=now + timedelta(
                seconds=svc.settings.validation_stale_seconds)))
    sent = sum(1 for upload_id in ids if svc.dispatch(VALIDATE_UPLOAD, upload_id))
    log.info("re-sent %d of %d stale validations", sent, len(ids))
    return sent


def _lapsed_validations(svc: Services, now: datetime) -> list[str]:
    with svc.sessions() as session:
        return list(session.scalars(
            select(Upload.id).where(Upload.status == UploadStatus.VALIDATING,
                                    or_(Upload.validation_lease_until.is_(None),
                                        Upload.validation_lease_until < now))
            .order_by(Upload.confirmed_at).limit(BATCH)))


def _give_up_on_validation(svc: Services, now: datetime) -> None:
    with svc.sessions() as session:
        ids = list(session.scalars(select(Upload.id).where(
            Upload.status == UploadStatus.VALIDATING,
            Upload.confirmed_at < now - VALIDATION_GIVE_UP).limit(BATCH)))
    for upload_id in ids:
        give_up(svc, upload_id, "gave up after retries")


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
        svc.upload_store.delete(upload.key)
        with svc.sessions.begin() as session:
            execute_dml(session, update(Upload).where(Upload.id == upload.id)
                            .values(raw_purged_at=now))
    return len(rows)


def expire_unconfirmed(svc: Services) -> int:
    now = svc.clock()
    with svc.sessions() as session:
        rows = list(session.scalars(
            select(Upload).where(Upload.status == UploadStatus.PENDING,
                                 Upload.url_expires_at < now - UNCONFIRMED_GRACE).limit(BATCH)))
    for upload in rows:
        svc.upload_store.delete(upload.key)
        with svc.sessions.begin() as session:
            done = updated_rows(session, update(Upload).where(
                Upload.id == upload.id, Upload.status == UploadStatus.PENDING).values(
                status=UploadStatus.EXPIRED, raw_purged_at=now))
            if done:
                audit.record(session, at=now, user_id=upload.user_id, action="upload.expired",
                             subject_type="upload", subject_id=upload.id)
    return len(rows)


RETAINED_STATES = (UploadStatus.READY, UploadStatus.REJECTED, UploadStatus.VALIDATING)


def delete_past_retention(svc: Services) -> int:
    """Selfies past their deadline, unless a try-on in flight still needs them
    (they go at the next pass after it finished)."""
    now = svc.clock()
    in_flight = select(TryOn.id).where(
        TryOn.upload_id == Upload.id,
        TryOn.status.in_(JobStatus.IN_FLIGHT)).exists()
    with svc.sessions() as session:
        ids = list(session.scalars(
            select(Upload.id).where(Upload.status.in_(RETAINED_STATES),
                                    Upload.delete_after < now, ~in_flight).limit(BATCH)))
    return sum(delete_upload(svc, upload_id, reason="retention",
                             only_if=lambda u: u.status in RETAINED_STATES) for upload_id in ids)


# Rows of uploads whose bytes are long gone (deleted, expired) are kept this long
# for the app (an upload reads `deleted`), then removed; the audit trail stays.
DEAD_ROW_RETENTION = timedelta(days=7)


def purge_dead_upload_rows(svc: Services) -> int:
    cutoff = svc.clock() - DEAD_ROW_RETENTION
    with svc.sessions.begin() as session:
        return updated_rows(session, delete(Upload).where(
            Upload.status.in_((UploadStatus.DELETED, UploadStatus.EXPIRED)),
            Upload.raw_purged_at.is_not(None),
            or_(Upload.deleted_at < cutoff,
                Upload.deleted_at.is_(None) & (Upload.url_expires_at < cutoff))))
