"""A user whose erasure is unfinished may not add uploads or try-ons: otherwise an
erasure could never finish (DELETE /v1/me, shared/privacy/erasure.py)."""

from __future__ import annotations

from sqlalchemy import Connection, exists, select
from sqlalchemy.orm import Session

from shared.core.errors import AppError
from shared.models import ErasureRequest, ErasureStatus


def refuse_while_erasing(conn: Session | Connection, user_id: str) -> None:
    """Inside the transaction that would add a row for the user (409, retriable)."""
    if conn.execute(select(exists().where(
            ErasureRequest.user_id == user_id,
            ErasureRequest.status.in_(ErasureStatus.UNFINISHED)))).scalar():
        raise AppError("user.erasure_in_progress")
