"""How long try-ons are kept: the deadline of a result, the window of an
Idempotency-Key, and the beat's pass that removes jobs past their deadline."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.access import daily_quota
from shared.core.db import execute_dml, updated_rows
from shared.models import TryOn
from shared.services import Services
from shared.tryons.removal import erase_job

BATCH = 500
IDEMPOTENCY_WINDOW = timedelta(hours=24)


def result_deadline(svc: Services, now: datetime) -> datetime:
    """Whole seconds, rounded down: S3 reports (and a lifecycle rule counts from) an
    object's creation in whole seconds, and the deadline must never come after it."""
    return now.replace(microsecond=0) + timedelta(days=svc.settings.result_retention_days)


def release_idempotency_keys(svc: Services) -> int:
    """Keys are kept 24 h; after that the same key may start a new job. Also ends
    the daily quota counters whose window is over (they are a user id kept for
    nothing once they count nothing)."""
    now = svc.clock()
    with svc.sessions.begin() as session:
        daily_quota.delete_ended_windows(session, now)
        return updated_rows(session, update(TryOn).where(
            TryOn.idempotency_key.is_not(None),
            TryOn.created_at < now - IDEMPOTENCY_WINDOW).values(idempotency_key=None))


def release_expired_key(session: Session, user_id: str, key_hash: str, now: datetime) -> None:
    """The user's key, if its window ended and the beat has not released it yet:
    the new job may take it (the unique index would refuse it otherwise)."""
    execute_dml(session, update(TryOn).where(
        TryOn.user_id == user_id, TryOn.idempotency_key == key_hash,
        TryOn.created_at < now - IDEMPOTENCY_WINDOW).values(idempotency_key=None))


def delete_expired_results(svc: Services) -> int:
    """Jobs past their deadline, with their results: succeeded ones 7 days after they
    finished (never favorites: their deleteAfter is empty), failed ones likewise."""
    now = svc.clock()
    with svc.sessions() as session:
        ids = list(session.scalars(select(TryOn.id).where(
            TryOn.delete_after.is_not(None), TryOn.delete_after < now).limit(BATCH)))
    return sum(erase_job(svc, job_id, reason="retention") for job_id in ids)
