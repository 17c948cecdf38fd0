"""Engine and session factory.

SQLite is the embedded default; API, worker and beat write to it at once, so it
runs in WAL mode with a busy timeout (readers never block the writer, writers
wait for each other instead of failing with "database is locked").
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared.core.pools import db_pool_size, process_concurrency

SQLITE_BUSY_TIMEOUT_MS = 15_000
# libpq's TCP keepalives: a server that stopped answering mid-query (a partition, a
# host gone) is found dead within about idle + interval x count = 25 s.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}


def make_engine(url: str, *, connect_timeout: int | None = None,
                pool_timeout: float | None = None, statement_timeout: float | None = None,
                **kwargs: Any) -> Engine:
    """`connect_timeout` (whole seconds, libpq's) and `pool_timeout` bound the two
    waits before a PostgreSQL query can start (Settings' DB_*_TIMEOUT_SECONDS);
    without them libpq waits 130 s for an unanswering server, longer than
    gunicorn lets a request live. `statement_timeout` bounds a query on the server,
    and TCP keepalives a server that stopped answering: on the threads pool no
    Celery time limit would. The pool holds one connection per task or request the
    process runs at once, plus headroom (shared/core/pools.py)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            hide_parameters=True, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A statement's parameters (object keys, user ids, checksums) never reach an
    # error's text, hence never a log line or a Sentry event.
    options: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    if "poolclass" not in kwargs:
        pool_size, max_overflow = db_pool_size(process_concurrency())
        options.update(pool_size=pool_size, max_overflow=max_overflow)
        if pool_timeout is not None:
            options["pool_timeout"] = pool_timeout
    connect_args: dict[str, Any] = dict(KEEPALIVES)
    if connect_timeout is not None:
        connect_args["connect_timeout"] = connect_timeout
    if statement_timeout is not None:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    return create_engine(url, connect_args=connect_args, **options, **kwargs)


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
