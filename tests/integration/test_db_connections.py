"""Pooled PostgreSQL connections without a pre-ping (shared/core/db.py): one the
server closed while it sat idle is replaced before the next transaction's first
statement, and a checkout sends nothing to the server."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from sqlalchemy import event, select, text, update

from shared.core.db import make_engine, make_session_factory, updated_rows
from shared.models import TryOn
from tests.conftest import PG_ADMIN_URL


def _terminate_idle_backends(database: str) -> int:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchone()
    assert row is not None
    return int(row[0])


def _server_statements(engine: Any) -> list[str]:
    """Every statement the engine's new connections send through a cursor, pings
    included: SQLAlchemy's pre-ping runs on a DBAPI cursor, below its own events."""
    sent: list[str] = []

    class Recording(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(query))
            return super().execute(query, *args, **kwargs)

    event.listen(engine, "connect",
                 lambda dbapi_conn, _record: setattr(dbapi_conn, "cursor_factory", Recording))
    return sent


def test_connections_closed_by_the_server_while_idle_are_replaced_without_an_error(
        pg_url: str) -> None:
    engine = make_engine(pg_url)
    sessions = make_session_factory(engine)
    try:
        # Several connections in the pool, all idle.
        held = [engine.connect() for _ in range(3)]
        before = {c.execute(text("SELECT pg_backend_pid()")).scalar() for c in held}
        for conn in held:
            conn.close()
        assert len(before) == 3

        assert _terminate_idle_backends(pg_url.rsplit("/", 1)[1]) >= 3
        time.sleep(0.2)  # the server's goodbye reaches the sockets

        # Every transaction works at once: reads and a conditional write.
        for _ in range(5):
            with sessions.begin() as session:
                pid = session.scalar(select(text("pg_backend_pid()")))
                assert updated_rows(session, update(TryOn).where(TryOn.id == "none")
                                    .values(attempt=1)) == 0
            assert pid not in before
    finally:
        engine.dispose()


def _sent_by_three_sessions(pg_url: str, **engine_options: Any) -> list[str]:
    engine = make_engine(pg_url, **engine_options)
    sessions = make_session_factory(engine)
    sent = _server_statements(engine)
    try:
        with sessions() as session:  # the pool's first connection
            session.execute(text("SELECT 1"))
        sent.clear()  # what connecting sent
        for _ in range(3):
            with sessions() as session:
                session.execute(text("SELECT 2"))
        return sent
    finally:
        engine.dispose()


def test_a_checkout_sends_nothing_before_the_first_statement(pg_url: str) -> None:
    assert _sent_by_three_sessions(pg_url) == ["SELECT 2"] * 3
    # What the recorder sees of a pre-ping, which this engine no longer does.
    with_ping = _sent_by_three_sessions(pg_url, pool_pre_ping=True)
    assert len(with_ping) == 6 and with_ping[1::2] == ["SELECT 2"] * 3
