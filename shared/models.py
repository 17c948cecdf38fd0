"""SQLAlchemy 2 models. The schema itself is owned by the Alembic migrations in
shared/migrations; tests check that the two agree."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC; SQLite drops the zone, so it is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class UploadStatus:
    PENDING = "pending"
    VALIDATING = "validating"
    READY = "ready"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DELETED = "deleted"


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    content_type: Mapped[str] = mapped_column(String(32), nullable=False)
    declared_size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    declared_checksum: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=UploadStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    url_expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    delete_after: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    client_width: Mapped[int | None] = mapped_column(Integer)
    client_height: Mapped[int | None] = mapped_column(Integer)
    sanitized_key: Mapped[str | None] = mapped_column(String(255))
    sanitized_sha256: Mapped[str | None] = mapped_column(String(64))
    rejection_code: Mapped[str | None] = mapped_column(String(64))
    # Set once the raw (unsanitized) object is gone from storage.
    raw_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Validation is leased, not assumed: the worker that claims it names itself
    # (its task id) and renews the lease while it works. Unclaimed, the lease time
    # is when the beat sends the validation again. `validation_crashes` counts
    # claims that never came back (the worker died): three and the image is refused.
    validation_owner: Mapped[str | None] = mapped_column(String(64))
    validation_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    validation_crashes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    __table_args__ = (
        Index("ix_uploads_user_created", "user_id", "created_at", "id"),
        Index("ix_uploads_status", "status"),
        Index("ix_uploads_validation_lease", "status", "validation_lease_until"),
    )


class AuditEvent(Base):
    """Append-only trail; erasure keeps it (it names ids, never image bytes or URLs)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    subject_type: Mapped[str] = mapped_column(String(32), nullable=False)
    subject_id: Mapped[str] = mapped_column(String(64), nullable=False)
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)

    __table_args__ = (Index("ix_audit_subject", "subject_type", "subject_id"),
                      Index("ix_audit_user", "user_id"))


class JobStatus:
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    IN_FLIGHT = (QUEUED, PROCESSING)


class TryOn(Base):
    """A try-on job. `attempt` numbers claims; each claim makes at most one fal
    submission, and the attempt number fences a claimant that lost its lease.

    `due_at` is when the job must next be looked at, or the reconciler steps in:
    for a queued job, when its run is due; for a claimed one, when its lease ends;
    for a submitted one, when fal is asked for its status if no news came."""

    __tablename__ = "try_ons"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False)
    upload_id: Mapped[str] = mapped_column(String(36), nullable=False)
    hairstyle_id: Mapped[str] = mapped_column(String(64), nullable=False)
    user_prompt: Mapped[str | None] = mapped_column(String(500))
    # The prompt fal is sent, composed from the style's template when the job was
    # accepted, so a catalogue change (a rename, a removal, a rolling deploy with two
    # catalogues) never changes or strands a job. None for jobs accepted before it
    # was stored: they fall back to the catalogue (shared/tryons/hairstyles.py).
    composed_prompt: Mapped[str | None] = mapped_column(Text)
    locale: Mapped[str] = mapped_column(String(8), nullable=False, default="en")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=JobStatus.QUEUED)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    fal_request_id: Mapped[str | None] = mapped_column(String(128))
    first_submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    result_key: Mapped[str | None] = mapped_column(String(255))
    thumbnail_key: Mapped[str | None] = mapped_column(String(255))
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    result_width: Mapped[int | None] = mapped_column(Integer)
    result_height: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    favorite: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    delete_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # fal failures seen (the retry budget); claims taken over are not counted here.
    fal_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # The retention tag the result objects are known to carry (`temporary`, `kept`),
    # or None when they must be brought in line with `favorite` (shared/tryons/results.py).
    result_tags: Mapped[str | None] = mapped_column(String(16))
    # SHA-256 of the client's Idempotency-Key: the database's guarantee of one job
    # per key, under the Redis record that replays the original response.
    idempotency_key: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_try_ons_user_created", "user_id", "created_at", "id"),
        Index("ux_try_ons_user_idempotency", "user_id", "idempotency_key", unique=True),
        Index("ix_try_ons_status", "status"),
        Index("ix_try_ons_upload", "upload_id"),
        Index("ix_try_ons_due", "status", "due_at"),
    )


class ErasureStatus:
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    UNFINISHED = (PENDING, RUNNING)


class ErasureRequest(Base):
    """DELETE /v1/me, stored before it is answered and resumed until done. One row
    per user: a second request returns (or reopens) the same erasure. Like the
    audit trail it outlives the erasure; it names the user id and counts only."""

    __tablename__ = "erasure_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=ErasureStatus.PENDING)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    runs: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    # Leased like a validation; unclaimed, when the beat sends it again.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(64))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)

    __table_args__ = (Index("ix_erasure_status_lease", "status", "lease_until"),)


class DailyQuota(Base):
    """A user's use of one daily quota (`kind`: presign, tryon): a fixed 24 h window
    from the first use. Counted in the transaction that writes what it pays for, so
    a request that fails rolls its charge back with its row (shared/access/daily_quota.py)."""

    __tablename__ = "daily_quotas"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used: Mapped[int] = mapped_column(Integer, nullable=False)
