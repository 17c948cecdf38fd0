"""Cursor pages, newest first, over any model with `created_at` and `id`.

The cursor is opaque to the app: base64 of (created_at, id) of the last item, so
pages stay stable while new rows arrive.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session, sessionmaker

from shared.core import untrusted_json
from shared.core.errors import AppError

MAX_PAGE = 100
T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def page(sessions: sessionmaker[Session], model: Any, query: Select[Any], *, limit: int,
         cursor: str | None) -> Page[Any]:
    limit = max(1, min(limit, MAX_PAGE))
    if cursor:
        created, last_id = decode_cursor(cursor)
        query = query.where(or_(model.created_at < created,
                                and_(model.created_at == created, model.id < last_id)))
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    with sessions() as session:
        rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].created_at, rows[-1].id) if more else None)


# "<microseconds since 1970 UTC>.<row id>": every string matching it decodes (17
# digits stay below the year 10000), so the OpenAPI document states it exactly
# (CURSOR_PATTERN, where the empty string is "no cursor": the first page).
_CURSOR = re.compile("[0-9]{1,17}\\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CURSOR_PATTERN = f"^({_CURSOR.pattern})?$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, tzinfo=UTC)  # a day of margin below datetime.max


def encode_cursor(created_at: datetime, row_id: str) -> str:
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Only what encode_cursor makes: an aware timestamp and a row id (the cursor comes
    from the client, so anything else is a 422, never a query that fails). The earlier
    format (base64 of the timestamp and id as JSON) is still read, for a client that
    holds a cursor across a deploy."""
    if _CURSOR.fullmatch(cursor):
        micros, row_id = cursor.split(".")
        return _EPOCH + timedelta(microseconds=int(micros)), row_id
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_text, row_id = untrusted_json.parse(raw)
        created = datetime.fromisoformat(created_text)
        if created.tzinfo is None:
            raise ValueError("naive")  # astimezone would take it as the server's time
        # Range-checked in UTC, where it is compared: `9999-12-31T23:59:59-14:00` is
        # past the largest datetime once converted (OverflowError).
        created = created.astimezone(UTC)
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise AppError("request.invalid", detail="bad cursor") from None
    if not _EPOCH <= created <= _LAST or not isinstance(row_id, str) or not is_uuid(row_id):
        raise AppError("request.invalid", detail="bad cursor")
    return created, row_id


def is_uuid(value: str) -> bool:
    """The canonical form only (uuid.UUID also takes braces, urn: and no dashes)."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False
