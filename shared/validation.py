"""Deep validation of a confirmed upload (run by the worker).

Steps: read the raw bytes (size-capped) → SHA-256 against the declared checksum →
the format Pillow detects agrees with the declared type → pixel cap from the
header → full decode → optional hooks (face, antivirus, NSFW) → sanitize into
`sanitized/{user}/{id}.jpg` → `ready`. Any failure of the content is a
rejection, final and not retried; a failure of our dependencies (storage,
clamd) raises so the task retries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import update

from shared import audit, metrics
from shared.images import ImageRejected, inspect_and_decode, sanitize
from shared.keys import sanitized_key
from shared.models import Upload, UploadStatus
from shared.services import Services
from shared.storage import ObjectMissing, sha256_b64
from shared.uploads import remove_raw_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: str  # ready | rejected | skipped
    code: str | None = None


class Rejection(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def validate_upload(svc: Services, upload_id: str) -> Outcome:
    with svc.sessions() as session:
        upload = session.get(Upload, upload_id)
    if upload is None or upload.status != UploadStatus.VALIDATING:
        # Already handled (a duplicate delivery or a reconciler re-send): nothing to do.
        return Outcome("skipped")
    timings: dict[str, float] = {}
    try:
        result = _check_and_sanitize(svc, upload, timings)
    except Rejection as rejection:
        reject(svc, upload, rejection)
        return Outcome(UploadStatus.REJECTED, rejection.code)
    _accept(svc, upload, result, timings)
    return Outcome(UploadStatus.READY)


@dataclass(frozen=True)
class _Sanitized:
    key: str
    sha256: str
    width: int
    height: int


def _check_and_sanitize(svc: Services, upload: Upload, timings: dict[str, float]) -> _Sanitized:
    s = svc.settings
    with _timed(timings, "fetch"):
        try:
            data = svc.storage.get_bytes(s.uploads_bucket, upload.key, max_bytes=s.max_upload_bytes)
        except ObjectMissing:
            raise Rejection("upload.object_missing") from None
    if len(data) > s.max_upload_bytes:
        raise Rejection("upload.too_large")
    if len(data) != upload.declared_size:
        raise Rejection("upload.size_mismatch")
    if upload.declared_checksum and sha256_b64(data) != upload.declared_checksum:
        raise Rejection("upload.checksum_mismatch")
    with _timed(timings, "decode"):
        try:
            _, image = inspect_and_decode(data, upload.content_type, s.max_image_pixels)
        except ImageRejected as exc:
            raise Rejection(exc.code, exc.detail) from None
    with _timed(timings, "scan"):
        for scanner in svc.scanners:
            verdict = scanner.scan(data, image)  # type: ignore[attr-defined]
            if verdict is not None:
                raise Rejection(verdict.code, getattr(verdict, "detail", ""))
    with _timed(timings, "sanitize"):
        clean = sanitize(image)
    key = sanitized_key(upload.user_id, upload.id)
    with _timed(timings, "store"):
        svc.storage.put_bytes(s.uploads_bucket, key, clean.data, content_type="image/jpeg")
    return _Sanitized(key=key, sha256=clean.sha256, width=clean.width, height=clean.height)


def _accept(svc: Services, upload: Upload, result: _Sanitized, timings: dict[str, float]) -> None:
    now = svc.clock()
    with svc.sessions.begin() as session:
        session.execute(update(Upload).where(
            Upload.id == upload.id, Upload.status == UploadStatus.VALIDATING).values(
            status=UploadStatus.READY, validated_at=now, sanitized_key=result.key,
            sanitized_sha256=result.sha256, width=result.width, height=result.height))
        audit.record(session, at=now, user_id=upload.user_id, action="upload.validated",
                     subject_type="upload", subject_id=upload.id,
                     sanitized_sha256=result.sha256, width=result.width, height=result.height)
    metrics.UPLOAD_VALIDATED.labels(outcome="ready").inc()
    log.info("upload %s ready [%s]", upload.id, _format_timings(timings))


def reject(svc: Services, upload: Upload, rejection: Rejection) -> None:
    now = svc.clock()
    remove_raw_bytes(svc, upload, now)
    with svc.sessions.begin() as session:
        session.execute(update(Upload).where(
            Upload.id == upload.id, Upload.status == UploadStatus.VALIDATING).values(
            status=UploadStatus.REJECTED, validated_at=now, rejection_code=rejection.code))
        audit.record(session, at=now, user_id=upload.user_id, action="upload.rejected",
                     subject_type="upload", subject_id=upload.id, code=rejection.code,
                     stage="validation")
    metrics.UPLOAD_VALIDATED.labels(outcome="rejected").inc()
    metrics.UPLOAD_REJECTED.labels(code=rejection.code).inc()
    log.warning("upload %s rejected: %s (%s)", upload.id, rejection.code, rejection.detail)


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


