"""Deep validation of a confirmed upload (run by the worker).

Steps: read the raw bytes (size-capped) → SHA-256 against the declared checksum →
the format Pillow detects agrees with the declared type → pixel cap from the
header → full decode → optional hooks (face, antivirus, NSFW) → sanitize into
`sanitized/{user}/{id}.jpg` → `ready`. Any failure of the content is a
rejection, final and not retried; a failure of our dependencies (storage,
clamd) raises so the task retries.

A validation is leased (shared/core/leases.py): the claiming worker names itself (its
task id), so a delivery of the same message after that worker died takes over at
once, and a worker that died whole is replaced by the beat when the lease ends.
A claim that never came back counts as a crash; an image whose validation crashed
its worker three times (a decode that exhausts memory, say) is rejected without
being opened again. Finishing takes the upload's row lock: the sanitized copy is
written and the state changed only while the upload is still `validating`, so a
duplicate run writes nothing twice and a deleted upload gets nothing written.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.core import audit, metrics
from shared.core.db import updated_rows
from shared.core.leases import LeaseKeeper
from shared.images.sanitize import ImageRejected, SanitizedImage, inspect_and_decode, sanitize
from shared.images.scanners import run_scanners
from shared.models import Upload, UploadStatus
from shared.services import Services
from shared.storage.base import ObjectMissing, sha256_b64
from shared.storage.keys import sanitized_key
from shared.uploads.use_cases import remove_raw_bytes

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=15)
RENEW_EVERY_SECONDS = 5.0
MAX_CRASHES = 3


@dataclass(frozen=True)
class Outcome:
    status: str  # ready | rejected | skipped
    code: str | None = None


class Rejection(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def validate_upload(svc: Services, upload_id: str, *, owner: str | None = None) -> Outcome:
    """Validate one upload. `owner` names this delivery (the task id): a claim held
    by the same name is a previous delivery of this message, which is no longer
    running, so it is taken over at once."""
    owner = owner or str(uuid.uuid4())
    upload = _claim(svc, upload_id, owner)
    if upload is None:
        return _poisoned_or_skipped(svc, upload_id, owner)
    timings: dict[str, float] = {}
    try:
        with LeaseKeeper(lambda: _renew(svc, upload_id, owner), RENEW_EVERY_SECONDS, "validation"):
            clean = _check_and_sanitize(svc, upload, timings)
    except Rejection as rejection:
        return _finish(svc, upload_id, rejection=rejection)
    except Exception:
        _release(svc, upload_id, owner)
        raise
    return _finish(svc, upload_id, clean=clean, timings=timings)


def _claim(svc: Services, upload_id: str, owner: str) -> Upload | None:
    now = svc.clock()
    with svc.sessions.begin() as session:
        taken_over = session.scalar(select(Upload.validation_owner.is_not(None)).where(
            Upload.id == upload_id))
        if not updated_rows(session, update(Upload).where(
                Upload.id == upload_id, Upload.status == UploadStatus.VALIDATING,
                Upload.validation_crashes < MAX_CRASHES,
                or_(Upload.validation_owner.is_(None), Upload.validation_lease_until < now,
                    Upload.validation_owner == owner)).values(
                validation_owner=owner, validation_lease_until=now + LEASE,
                # Counted now, given back when this run ends by itself (see _release).
                validation_crashes=Upload.validation_crashes + 1)):
            return None
        upload = session.get(Upload, upload_id)
    if taken_over:
        metrics.VALIDATION_TAKEOVERS.inc()
        log.warning("upload %s: the previous validation never came back; validating again",
                    upload_id)
    return upload


def _poisoned_or_skipped(svc: Services, upload_id: str, owner: str) -> Outcome:
    """Not claimed: done already, another live worker has it, or it crashed its
    workers too often (then it is rejected, without opening the image again)."""
    with svc.sessions() as session:
        upload = session.get(Upload, upload_id)
    if (upload is not None and upload.status == UploadStatus.VALIDATING
            and upload.validation_crashes >= MAX_CRASHES
            and (upload.validation_owner in (None, owner)
                 or (upload.validation_lease_until or svc.clock()) <= svc.clock())):
        return give_up(svc, upload_id, f"crashed its worker {upload.validation_crashes} times")
    return Outcome("skipped")  # a duplicate delivery or a reconciler re-send


def _renew(svc: Services, upload_id: str, owner: str) -> bool:
    with svc.sessions.begin() as session:
        return bool(updated_rows(session, update(Upload).where(
            Upload.id == upload_id, Upload.validation_owner == owner,
            Upload.status == UploadStatus.VALIDATING).values(
            validation_lease_until=svc.clock() + LEASE)))


def _release(svc: Services, upload_id: str, owner: str) -> None:
    """A run that failed by itself (storage down: the task retries) gives its claim
    back and is not counted as a crash."""
    try:
        with svc.sessions.begin() as session:
            session.execute(update(Upload).where(
                Upload.id == upload_id, Upload.validation_owner == owner).values(
                validation_owner=None, validation_crashes=Upload.validation_crashes - 1,
                validation_lease_until=svc.clock()
                + timedelta(seconds=svc.settings.validation_stale_seconds)))
    except Exception as exc:  # noqa: BLE001 - the lease lapses by itself
        log.warning("could not release validation of %s (%s)", upload_id, type(exc).__name__)


def _check_and_sanitize(svc: Services, upload: Upload, timings: dict[str, float]) -> SanitizedImage:
    s = svc.settings
    with _timed(timings, "fetch"):
        try:
            data = svc.upload_store.get_bytes(upload.key, max_bytes=s.max_upload_bytes)
        except ObjectMissing:
            raise Rejection("upload.object_missing") from None
    if len(data) > s.max_upload_bytes:
        raise Rejection("upload.too_large")
    if len(data) != upload.declared_size:
        raise Rejection("upload.size_mismatch")
    if upload.declared_checksum and sha256_b64(data) != upload.declared_checksum:
        raise Rejection("upload.checksum_mismatch")
    try:
        with _timed(timings, "decode"):
            try:
                _, image = inspect_and_decode(data, upload.content_type, s.max_image_pixels)
            except ImageRejected as exc:
                raise Rejection(exc.code, exc.detail) from None
        with _timed(timings, "scan"):
            verdict = run_scanners(svc.scanners, data, image)
            if verdict is not None:
                raise Rejection(verdict.code, verdict.detail)
        with _timed(timings, "sanitize"):
            return sanitize(image)
    except MemoryError:
        # The worker's memory limit (WORKER_MEMORY_LIMIT_MB) stopped the decode.
        raise Rejection("upload.validation_failed", "memory limit reached") from None


def _finish(svc: Services, upload_id: str, *, clean: SanitizedImage | None = None,
            rejection: Rejection | None = None,
            timings: dict[str, float] | None = None) -> Outcome:
    """Write the outcome under the row lock, once; a run that finds the upload no
    longer validating (done by a duplicate, deleted, erased) writes nothing."""
    now = svc.clock()
    with svc.sessions.begin() as session:
        upload = _locked(session, upload_id)
        if upload is None or upload.status != UploadStatus.VALIDATING:
            return Outcome("skipped")
        if rejection is not None:
            _reject(svc, session, upload, rejection, now)
            return Outcome(UploadStatus.REJECTED, rejection.code)
        assert clean is not None
        key = sanitized_key(upload.user_id, upload.id)
        with _timed(timings if timings is not None else {}, "store"):
            svc.upload_store.put_bytes(key, clean.data, content_type="image/jpeg")
        session.execute(update(Upload).where(Upload.id == upload.id).values(
            status=UploadStatus.READY, validated_at=now, sanitized_key=key,
            sanitized_sha256=clean.sha256, width=clean.width, height=clean.height,
            validation_owner=None, validation_crashes=0, validation_lease_until=None))
        audit.record(session, at=now, user_id=upload.user_id, action="upload.validated",
                     subject_type="upload", subject_id=upload.id,
                     sanitized_sha256=clean.sha256, width=clean.width, height=clean.height)
    metrics.UPLOAD_VALIDATED.labels(outcome="ready").inc()
    log.info("upload %s ready [%s]", upload_id, _format_timings(timings or {}))
    return Outcome(UploadStatus.READY)


def _locked(session: Session, upload_id: str) -> Upload | None:
    return session.scalars(select(Upload).where(Upload.id == upload_id).with_for_update()) \
        .one_or_none()


def _reject(svc: Services, session: Session, upload: Upload, rejection: Rejection,
            now: datetime) -> None:
    remove_raw_bytes(svc, upload, now)
    session.execute(update(Upload).where(Upload.id == upload.id).values(
        status=UploadStatus.REJECTED, validated_at=now, rejection_code=rejection.code,
        validation_owner=None, validation_lease_until=None))
    audit.record(session, at=now, user_id=upload.user_id, action="upload.rejected",
                 subject_type="upload", subject_id=upload.id, code=rejection.code,
                 stage="validation")
    metrics.UPLOAD_VALIDATED.labels(outcome="rejected").inc()
    metrics.UPLOAD_REJECTED.labels(code=rejection.code).inc()
    log.warning("upload %s rejected: %s (%s)", upload.id, rejection.code, rejection.detail)


def give_up(svc: Services, upload_id: str, detail: str) -> Outcome:
    """Reject with `upload.validation_failed` (crashes, time limits, the hour's end)."""
    return _finish(svc, upload_id, rejection=Rejection("upload.validation_failed", detail))


class _timed:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = time.perf_counter() - self.start


def _format_timings(timings: dict[str, float]) -> str:
    total = sum(timings.values())
    parts = ", ".join(f"{k}={v * 1000:.0f}ms" for k, v in timings.items())
    return f"{total * 1000:.0f}ms; {parts}"
