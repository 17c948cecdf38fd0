"""The owned-or-404 lookup every use case makes (a row of the caller's, by id), and
the caller's rows in cursor pages."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from shared.core.errors import AppError
from shared.core.pagination import Page, is_uuid, page
from shared.models import TryOn, Upload

Owned = TypeVar("Owned", Upload, TryOn)


def owned(session: Session, model: type[Owned], row_id: str, user_id: str,
          missing: str) -> Owned:
    """The caller's row, else AppError(missing). Another user's row answers exactly
    like a missing one, and an id that is not a UUID is never looked up."""
    row = session.get(model, row_id) if is_uuid(row_id) else None
    if row is None or row.user_id != user_id:
        raise AppError(missing)
    return row


def get_owned(sessions: sessionmaker[Session], model: type[Owned], row_id: str, user_id: str,
              missing: str) -> Owned:
    with sessions() as session:
        return owned(session, model, row_id, user_id, missing)


def page_owned(sessions: sessionmaker[Session], model: type[Owned], user_id: str,
               *conditions: ColumnElement[Any], limit: int, cursor: str | None) -> Page[Owned]:
    """The caller's rows (newest first) that meet the conditions, one page."""
    return page(sessions, model, select(model).where(model.user_id == user_id, *conditions),
                limit=limit, cursor=cursor)
