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

A crash is counted when the claim is taken and given back when the run ends by
itself with a dependency failure (storage, the database, Redis, clamd), in any step
up to and including the finish (the sanitized copy, the placeholder, the row); an
unexpected exception keeps its count, as a crash does. If the give-back itself
fails (the database is down), the task's retry (the same task id, one attempt
later: only dependency failures are retried) finds its earlier attempt's claim and
takes that count over instead of adding one, so an outage never rejects a selfie.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.core import audit, metrics
from shared.core.db import execute_dml, updated_rows
from shared.core.leases import LeaseKeeper
from shared.images.sanitize import ImageRejected, SanitizedImage, inspect_and_decode, sanitize
from shared.images.scanners import run_scanners
from shared.models import Upload, UploadStatus
from shared.services import DEPENDENCY_FAILURES, Services
from shared.storage.base import ObjectMissing, sha256_b64
from shared.storage.keys import sanitized_key
from shared.uploads.use_cases import remove_raw_bytes

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=15)
RENEW_EVERY_SECONDS = 5.0
MAX_CRASHES = 3
# Room for "#<attempt>" after a task id in the 64-character owner column.
MAX_OWNER_CHARS = 56

def is_dependency_failure(exc: BaseException) -> bool:
    """One of DEPENDENCY_FAILURES, or a database error that invalidated its connection."""
    return isinstance(exc, DEPENDENCY_FAILURES) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


@dataclass(frozen=True)
class Outcome:
    status: str  # ready | rejected | skipped
    code: str | None = None


class Rejection(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def validate_upload(svc: Services, upload_id: str, *, owner: str | None = None,
                    attempt: int = 0) -> Outcome:
    """Validate one upload. `owner` names this delivery (the task id): a claim held
    by the same name is a previous delivery of this message, which is no longer
    running, so it is taken over at once. `attempt` is the task's retry number
    (Celery keeps the task id across retries)."""
    owner = (owner or str(uuid.uuid4()))[:MAX_OWNER_CHARS]
    claim = claim_name(owner, attempt)
    upload = _claim(svc, upload_id, owner, attempt)
    if upload is None:
        return _poisoned_or_skipped(svc, upload_id, owner)
    timings: dict[str, float] = {}
    try:
        try:
            with LeaseKeeper(lambda: _renew(svc, upload_id, claim), RENEW_EVERY_SECONDS,
                             "validation"):
                clean = _check_and_sanitize(svc, upload, timings)
        except Rejection as rejection:
            return _finish(svc, upload_id, rejection=rejection)
        return _finish(svc, upload_id, clean=clean, timings=timings)
    except Exception as exc:
        # Finishing writes to storage and the database too: its failures are the
        # run's, given back (or kept, for a bug) like those of the checks.
        _release(svc, upload_id, claim, crashed=not is_dependency_failure(exc))
        raise


def claim_name(owner: str, attempt: int) -> str:
    """What the claim column holds: the task id, and the retry number after the first."""
    return owner if attempt <= 0 else f"{owner}#{attempt}"


def _attempt_of(claim: str | None, owner: str) -> int | None:
    """The attempt of this message (task id) that holds `claim`, or None if another
    message's (or nobody's)."""
    if claim == owner:
        return 0
    if claim is None or not claim.startswith(owner + "#"):
        return None
    number = claim[len(owner) + 1:]
    return int(number) if number.isdigit() else None


def _claim(svc: Services, upload_id: str, owner: str, attempt: int) -> Upload | None:
    now = svc.clock()
    with svc.sessions.begin() as session:
        previous = session.scalar(select(Upload.validation_owner).where(Upload.id == upload_id))
        earlier = _attempt_of(previous, owner)
        ours = earlier is not None and earlier <= attempt
        # An earlier attempt of this message ended with a dependency failure (nothing
        # else is retried) whose give-back failed: its count becomes this claim's.
        inherited = earlier is not None and earlier < attempt
        if not updated_rows(session, update(Upload).where(
                Upload.id == upload_id, Upload.status == UploadStatus.VALIDATING,
                Upload.validation_crashes < MAX_CRASHES,
                _claimable(previous, ours=ours, now=now)).values(
                validation_owner=claim_name(owner, attempt),
                validation_lease_until=now + LEASE,
                # Counted now, given back when this run ends by itself (see _release).
                validation_crashes=Upload.validation_crashes + (0 if inherited else 1))):
            return None
        upload = session.get(Upload, upload_id)
    if inherited:
        log.info("upload %s: the claim of attempt %s was not given back (a dependency "
                 "failure); attempt %s takes it over", upload_id, earlier, attempt)
    elif previous is not None:
        metrics.VALIDATION_TAKEOVERS.inc()
        log.warning("upload %s: the previous validation never came back; validating again",
                    upload_id)
    return upload


def _claimable(previous: str | None, *, ours: bool, now: datetime) -> ColumnElement[bool]:
    """Still the claim seen (compare-and-set), and free: nobody's, this message's
    (its earlier delivery or attempt is no longer running), or lapsed."""
    if previous is None:
        return Upload.validation_owner.is_(None)
    if ours:
        return Upload.validation_owner == previous
    return and_(Upload.validation_owner == previous, Upload.validation_lease_until < now)


def _poisoned_or_skipped(svc: Services, upload_id: str, owner: str) -> Outcome:
    """Not claimed: done already, another live worker has it, or it crashed its
    workers too often (then it is rejected, without opening the image again)."""
    with svc.sessions() as session:
        upload = session.get(Upload, upload_id)
    if (upload is not None and upload.status == UploadStatus.VALIDATING
            and upload.validation_crashes >= MAX_CRASHES
            and (upload.validation_owner is None
                 or _attempt_of(upload.validation_owner, owner) is not None
                 or (upload.validation_lease_until or svc.clock()) <= svc.clock())):
        return give_up(svc, upload_id, f"crashed its worker {upload.validation_crashes} times")
    return Outcome("skipped")  # a duplicate delivery or a reconciler re-send


def _renew(svc: Services, upload_id: str, claim: str) -> bool:
    with svc.sessions.begin() as session:
        return bool(updated_rows(session, update(Upload).where(
            Upload.id == upload_id, Upload.validation_owner == claim,
            Upload.status == UploadStatus.VALIDATING).values(
            validation_lease_until=svc.clock() + LEASE)))


def _release(svc: Services, upload_id: str, claim: str, *, crashed: bool) -> None:
    """A run that ended by itself gives its claim back, so the beat re-sends it when
    due. A dependency failure (the task retries) also gives back the crash counted
    at the claim; an unexpected exception keeps it: a bug that fails every run is
    rejected after three, like an image that kills its worker."""
    try:
        with svc.sessions.begin() as session:
            execute_dml(session, update(Upload).where(
                Upload.id == upload_id, Upload.validation_owner == claim).values(
                validation_owner=None,
                validation_crashes=Upload.validation_crashes - (0 if crashed else 1),
                validation_lease_until=svc.clock()
                + timedelta(seconds=svc.settings.validation_stale_seconds)))
    except Exception as exc:  # noqa: BLE001 - the retry takes the claim over (see _claim)
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
        execute_dml(session, update(Upload).where(Upload.id == upload.id).values(
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
    execute_dml(session, update(Upload).where(Upload.id == upload.id).values(
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
