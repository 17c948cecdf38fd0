"""The upload use cases: presign, confirm, read, list, delete.

Plain functions over `Services`; the API views and tests call them directly.
Deep validation (in the worker) lives in shared/uploads/validation.py, retention in
shared/uploads/retention.py.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update

from shared.access import daily_quota
from shared.access.erasure_lock import refuse_while_erasing
from shared.core import audit, metrics
from shared.core.db import execute_dml, updated_rows
from shared.core.errors import AppError
from shared.core.ownership import get_owned, page_owned
from shared.core.pagination import Page
from shared.core.task_names import VALIDATE_UPLOAD
from shared.models import Upload, UploadStatus
from shared.services import Services
from shared.storage.base import ObjectMissing, PresignedPut
from shared.storage.keys import EXTENSIONS, parse_raw_key, raw_upload_key, sanitized_key

log = logging.getLogger(__name__)

CONFIRMED_STATES = {UploadStatus.VALIDATING, UploadStatus.READY, UploadStatus.REJECTED}


@dataclass(frozen=True)
class IssuedUpload:
    upload: Upload
    put: PresignedPut
    max_bytes: int


def presign(svc: Services, user_id: str, *, content_type: str, content_length: int,
            checksum: str | None, daily_limit: int | None = None) -> IssuedUpload:
    """Record the issuance, then sign a single-use PUT for exactly these bytes.

    The daily quota (`daily_limit` presigns) is counted in the transaction that
    records the issuance: a bad request, one refused during an erasure, or one whose
    write fails costs nothing."""
    s = svc.settings
    if content_type not in EXTENSIONS:
        raise AppError("upload.unsupported_type")
    if content_length > s.max_upload_bytes:
        raise AppError("upload.too_large")
    if content_length < 1:
        raise AppError("request.invalid")
    if checksum is not None and not _is_sha256_b64(checksum):
        raise AppError("request.invalid", detail="checksum is not base64 SHA-256")
    now = svc.clock()
    upload_id = str(uuid.uuid4())
    row = {"id": upload_id, "user_id": user_id,
           "key": raw_upload_key(user_id, upload_id, content_type),
           "content_type": content_type, "declared_size": content_length,
           "declared_checksum": checksum, "status": UploadStatus.PENDING, "created_at": now,
           "url_expires_at": now + timedelta(seconds=s.presign_ttl_seconds),
           "delete_after": now + timedelta(hours=s.upload_retention_hours),
           "validation_crashes": 0}
    upload = Upload(**row)
    # The URL is signed only after the issuance row is committed: a URL we could
    # not account for later would be an upload nobody can confirm or clean up.
    # A Core INSERT of the same values on a plain connection: this is the hot path
    # of the API, and the ORM's unit of work costs more than the insert itself.
    with svc.engine.begin() as conn:
        refuse_while_erasing(conn, user_id)
        if daily_limit is not None:
            daily_quota.consume(conn, user_id=user_id, kind=daily_quota.PRESIGN,
                                limit=daily_limit, now=now)
        conn.execute(insert(Upload).values(**row))
        audit.record(conn, at=now, user_id=user_id, action="upload.issued",
                     subject_type="upload", subject_id=upload_id,
                     content_type=content_type, size=content_length)
    put = svc.upload_store.presign_put(upload.key, content_type=content_type,
                                       content_length=content_length, checksum_sha256=checksum,
                                       expires_in=s.presign_ttl_seconds)
    metrics.UPLOAD_ISSUED.inc()
    return IssuedUpload(upload=upload, put=put, max_bytes=s.max_upload_bytes)


def _is_sha256_b64(value: str) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def confirm(svc: Services, user_id: str, key: str, *, width: int | None = None,
            height: int | None = None) -> Upload:
    """Check the object the client says it uploaded, then hand it to validation."""
    s = svc.settings
    parsed = parse_raw_key(key)
    if parsed is None or parsed[0] != user_id:
        raise AppError("upload.forbidden_key")
    with svc.sessions() as session:
        upload = session.scalars(select(Upload).where(Upload.key == key)).one_or_none()
    if upload is None or upload.user_id != user_id:
        raise AppError("upload.forbidden_key", detail="key not issued to this user")
    _check_confirmable(upload)

    try:
        info = svc.upload_store.head(key)
    except ObjectMissing:
        raise AppError("upload.object_missing") from None
    mismatch = _mismatch(upload, info.size, info.content_type, info.checksum_sha256)
    now = svc.clock()
    if mismatch:
        _reject_at_confirm(svc, upload, mismatch, now)
        raise AppError(mismatch)

    with svc.sessions.begin() as session:
        # Conditional update: of two concurrent confirms exactly one wins.
        won = updated_rows(session, update(Upload).where(
            Upload.id == upload.id, Upload.status == UploadStatus.PENDING).values(
            status=UploadStatus.VALIDATING, confirmed_at=now, size_bytes=info.size,
            client_width=width, client_height=height,
            # Unclaimed, the lease time is when the beat sends the validation again.
            validation_owner=None, validation_crashes=0,
            validation_lease_until=now + timedelta(seconds=s.validation_stale_seconds)))
        if not won:
            raise AppError("upload.already_confirmed")
        audit.record(session, at=now, user_id=user_id, action="upload.confirmed",
                     subject_type="upload", subject_id=upload.id, size=info.size)
    metrics.UPLOAD_CONFIRMED.inc()
    # Sent only after the commit, so the worker always finds the row; if the
    # broker is down the reconciler re-sends it (shared/uploads/retention.py).
    svc.dispatch(VALIDATE_UPLOAD, upload.id)
    return get(svc, user_id, upload.id)


def _check_confirmable(upload: Upload) -> None:
    if upload.status in CONFIRMED_STATES:
        raise AppError("upload.already_confirmed")
    if upload.status == UploadStatus.EXPIRED:
        raise AppError("upload.expired")
    if upload.status == UploadStatus.DELETED:
        raise AppError("upload.not_found")


def _mismatch(upload: Upload, size: int, content_type: str | None,
              checksum: str | None) -> str | None:
    if size != upload.declared_size:
        return "upload.size_mismatch"
    if (content_type or "").split(";")[0].strip().lower() != upload.content_type:
        return "upload.type_mismatch"
    if upload.declared_checksum and checksum and checksum != upload.declared_checksum:
        return "upload.checksum_mismatch"
    return None


def _reject_at_confirm(svc: Services, upload: Upload, code: str, now: datetime) -> None:
    remove_raw_bytes(svc, upload, now)
    with svc.sessions.begin() as session:
        session.execute(
            update(Upload).where(Upload.id == upload.id, Upload.status == UploadStatus.PENDING)
            .values(status=UploadStatus.REJECTED, rejection_code=code, confirmed_at=now,
                    validated_at=now)
        )
        audit.record(session, at=now, user_id=upload.user_id, action="upload.rejected",
                     subject_type="upload", subject_id=upload.id, code=code, stage="confirm")
    metrics.UPLOAD_REJECTED.labels(code=code).inc()
    log.warning("upload %s rejected at confirm: %s", upload.id, code)


def remove_raw_bytes(svc: Services, upload: Upload, now: datetime) -> None:
    """Remove what the client uploaded without reopening its URL.

    While the presigned URL lives, the object's presence is what makes
    `If-None-Match: *` refuse a second PUT, so its bytes are replaced by an empty
    placeholder; the placeholder is deleted once the URL has expired.
    """
    if now < upload.url_expires_at + timedelta(seconds=svc.settings.raw_purge_margin_seconds):
        svc.upload_store.put_bytes(upload.key, b"", content_type=upload.content_type)
    else:
        svc.upload_store.delete(upload.key)


def get(svc: Services, user_id: str, upload_id: str) -> Upload:
    """The caller's upload. A deleted one is gone, as a deleted try-on is: 404 (its
    record is still listed with `status=deleted` until the row itself is purged)."""
    upload = _owned(svc, user_id, upload_id)
    if upload.status == UploadStatus.DELETED:
        raise AppError("upload.not_found")
    return upload


def _owned(svc: Services, user_id: str, upload_id: str) -> Upload:
    return get_owned(svc.sessions, Upload, upload_id, user_id, "upload.not_found")


def list_for_user(svc: Services, user_id: str, *, limit: int, cursor: str | None,
                  status: str | None) -> Page[Upload]:
    # Deleted uploads are listed only when asked for by status.
    condition = Upload.status == status if status else Upload.status != UploadStatus.DELETED
    return page_owned(svc.sessions, Upload, user_id, condition, limit=limit, cursor=cursor)


def delete(svc: Services, user_id: str, upload_id: str) -> None:
    """Delete the selfie's objects now and mark the record deleted (idempotent)."""
    _owned(svc, user_id, upload_id)
    delete_upload(svc, upload_id, reason="user")


def delete_upload(svc: Services, upload_id: str, *, reason: str,
                  only_if: Callable[[Upload], bool] = lambda _: True) -> bool:
    """Remove an upload's objects and mark it deleted, under its row lock: a
    validation finishing at the same moment either wrote its sanitized copy before
    (and it goes now) or finds the upload deleted and writes nothing."""
    with svc.sessions.begin() as session:
        upload = session.scalars(select(Upload).where(Upload.id == upload_id).with_for_update()) \
            .one_or_none()
        if upload is None or upload.status == UploadStatus.DELETED or not only_if(upload):
            return False
        now = svc.clock()
        erase_objects(svc, upload, now)
        execute_dml(session, update(Upload).where(Upload.id == upload.id).values(
            status=UploadStatus.DELETED, deleted_at=now))
        audit.record(session, at=now, user_id=upload.user_id, action="upload.deleted",
                     subject_type="upload", subject_id=upload.id, reason=reason)
    return True


def erase_objects(svc: Services, upload: Upload, now: datetime) -> None:
    # The sanitized key by name: a validator that died after writing it left an
    # object its row never recorded.
    svc.upload_store.delete(sanitized_key(upload.user_id, upload.id))
    if upload.raw_purged_at is None:
        remove_raw_bytes(svc, upload, now)
