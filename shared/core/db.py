"""Engine and session factory.

SQLite is the embedded default; API, worker and beat write to it at once, so it
runs in WAL mode with a busy timeout (readers never block the writer, writers
wait for each other instead of failing with "database is locked").
"""

from __future__ import annotations

import select
from typing import Any, cast

import psycopg
from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from shared.core.pools import db_pool_size, process_concurrency

SQLITE_BUSY_TIMEOUT_MS = 15_000
# libpq's TCP keepalives: a server that stopped answering mid-query (a partition, a
# host gone) is found dead within about idle + interval x count = 25 s.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}
# A pooled connection older than this is replaced at its next checkout, before a
# server's or a proxy's idle limit can cut it.
POOL_RECYCLE_SECONDS = 1800


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
    options: dict[str, Any] = {"pool_recycle": POOL_RECYCLE_SECONDS, "hide_parameters": True}
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
    engine = create_engine(url, connect_args=connect_args, **options, **kwargs)
    event.listen(engine, "checkout", _replace_if_closed_by_server)
    return engine


def _replace_if_closed_by_server(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection the server closed while it sat idle (a restart, a failover,
    `pg_terminate_backend`, an idle timeout) is replaced before the transaction's
    first statement is sent: SQLAlchemy reconnects on DisconnectionError.

    Checked without a round trip. A server that ends a session writes its reason and
    closes the socket, so an idle connection that has anything to read is closing:
    nothing else arrives unasked (we never LISTEN, and PostgreSQL's TLS sends neither
    session tickets nor renegotiations). Whatever was read is not trusted: libpq
    swallows the goodbye without failing until the close arrives, so a false alarm
    costs a reconnect, never an error. Pre-ping's `SELECT 1` cost a round trip per
    checkout, several per request and task (docs/performance.md). A connection
    cut in the microseconds between this check and the first statement fails that
    statement as before: a transient error (the API answers 503, tasks retry)."""
    if not isinstance(dbapi_conn, psycopg.Connection):
        return  # another driver: its own ways (only psycopg is installed)
    if dbapi_conn.closed or dbapi_conn.broken:
        raise exc.DisconnectionError("the connection is closed")
    try:
        poller = select.poll()
        poller.register(dbapi_conn.pgconn.socket, select.POLLIN | select.POLLPRI)
        readable = poller.poll(0)
    except (psycopg.Error, OSError, ValueError) as error:  # no socket left
        raise exc.DisconnectionError(type(error).__name__) from None
    if readable:
        raise exc.DisconnectionError("the server closed the connection while it was idle")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def execute_dml(session: Session, statement: Executable) -> CursorResult[Any]:
    """An INSERT, UPDATE or DELETE in the session's transaction, run as Core.

    Given to the session itself, SQLAlchemy takes its ORM bulk path: it evaluates the
    WHERE clause against every object the session holds to update them in place.
    That cost ~0.3 ms of CPU per statement and was 14 % of a fal worker's GIL time
    (docs/performance.md). So objects the session already loaded keep the values
    they were read with: callers read what they need first, or load afresh after."""
    session.flush()  # what autoflush does before an ORM statement (nothing when clean)
    return cast("CursorResult[Any]", session.connection().execute(statement))


def updated_rows(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE and say how many rows it changed (conditional updates
    decide races)."""
    return int(execute_dml(session, statement).rowcount)
