"""Daily quotas (presigns, try-ons), counted in the transaction that writes what they
pay for.

A charge taken before the write and kept when the write fails would bill the user
for a 5xx; `limits`' Redis counters cannot give a charge back. Here the charge is
one upsert on the user's `daily_quotas` row inside the caller's transaction: it
commits with the upload or the job, or rolls back with it. The row's lock also
orders concurrent requests of one user, so the limit holds under races.

The window is fixed: 24 h from the first use in it, as before.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from shared.core.errors import AppError
from shared.models import DailyQuota, UTCDateTime

WINDOW = timedelta(days=1)
PRESIGN = "presign"
TRYON = "tryon"
_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def consume(conn: Connection | Session, *, user_id: str, kind: str, limit: int,
            now: datetime) -> None:
    """Count one use of `kind` for the user, or raise 429 `quota.exceeded` with
    Retry-After (the caller's transaction then rolls the count back)."""
    table = DailyQuota.__table__
    expired = table.c.window_start <= literal(now - WINDOW, UTCDateTime())
    dialect = conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name
    statement = _INSERTS[dialect](table).values(
        user_id=user_id, kind=kind, window_start=now, used=1)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.user_id, table.c.kind],
        set_={"window_start": case((expired, literal(now, UTCDateTime())),
                                   else_=table.c.window_start),
              "used": case((expired, 1), else_=table.c.used + 1)},
    ).returning(table.c.used, table.c.window_start)
    used, window_start = conn.execute(statement).one()
    if used > limit:
        # SQLite hands back the zone-less text of RETURNING: UTC by construction.
        started = UTCDateTime().process_result_value(window_start, None) or now
        seconds = (started + WINDOW - now).total_seconds()
        raise AppError("quota.exceeded", retry_after=max(1, math.ceil(seconds)),
                       detail=f"{kind} quota")


def forget(conn: Connection | Session, user_id: str) -> None:
    """The user's counters (erasure)."""
    conn.execute(delete(DailyQuota).where(DailyQuota.user_id == user_id))


def delete_ended_windows(conn: Connection | Session, now: datetime) -> int:
    """Counters whose window ended: nothing to count any more, and a user id to
    keep no longer than needed."""
    result = conn.execute(delete(DailyQuota).where(DailyQuota.window_start <= now - WINDOW))
    return int(getattr(result, "rowcount", 0) or 0)
