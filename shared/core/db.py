"""Engine and session factory.

SQLite is the embedded default; API, worker and beat write to it at once, so it
runs in WAL mode with a busy timeout (readers never block the writer, writers
wait for each other instead of failing with "database is locked").
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 15_000


def make_engine(url: str, *, connect_timeout: int | None = None,
                pool_timeout: float | None = None, **kwargs: Any) -> Engine:
    """`connect_timeout` (whole seconds, libpq's) and `pool_timeout` bound the two
    waits before a PostgreSQL query can start (Settings' DB_*_TIMEOUT_SECONDS);
    without them libpq waits 130 s for an unanswering server, longer than
    gunicorn lets a request live. A query on an open connection has no client-side
    bound: a server that stops answering mid-query is cut off by the worker timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    options: dict[str, Any] = {"pool_pre_ping": True}
    if "poolclass" not in kwargs:
        options.update(pool_size=5, max_overflow=10)
        if pool_timeout is not None:
            options["pool_timeout"] = pool_timeout
    if connect_timeout is not None:
        options["connect_args"] = {"connect_timeout": connect_timeout}
    return create_engine(url, **options, **kwargs)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def updated_rows(session: Session, statement: Executable) -> int:
    """Run an UPDATE and say how many rows it changed (conditional updates decide races)."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount)
