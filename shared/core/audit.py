"""Audit events: who did what to which object, and when. Never URLs or bytes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from shared.core.db import execute_dml
from shared.core.observability import current_correlation_id
from shared.models import AuditEvent


def record(session: Session | Connection, *, at: datetime, user_id: str, action: str,
           subject_type: str, subject_id: str, **details: Any) -> None:
    # A Core INSERT in the caller's transaction: no ORM unit-of-work or bulk path for
    # an append-only row (it is on the presign and try-on hot paths).
    statement = insert(AuditEvent).values(
        at=at, user_id=user_id, action=action, subject_type=subject_type,
        subject_id=subject_id, correlation_id=current_correlation_id(), details=details)
    if isinstance(session, Session):
        execute_dml(session, statement)
    else:
        session.execute(statement)
