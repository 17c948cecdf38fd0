"""CPU and wall time of the round trips every request and task makes, the way the
code makes them and the way it made them before (docs/performance.md, "Fifth pass"):

- a conditional UPDATE in its own transaction: ORM-enabled (`session.execute`) vs Core
  in the session's transaction (`shared.core.db.updated_rows`), with and without the
  job's row loaded in the session first;
- an audit row (`shared.core.audit.record`);
- a pool checkout plus one `SELECT 1`: with SQLAlchemy's pre-ping vs without
  (shared/core/db.py checks for a closed connection without a round trip);
- a task publish (`shared.core.tasks.send`): kombu's Redis transport vs ours
  (shared/core/broker_transport.py), on the real Redis.

Against this machine's PostgreSQL (a fresh database, dropped afterwards) and Redis.
Prints the figures; asserts nothing.

    .venv/bin/python bench/roundtrip_bench.py [--n 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kombu import Connection  # noqa: E402
from sqlalchemy import select, text, update  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from bench.common.database import fresh_database  # noqa: E402
from shared.core import audit  # noqa: E402
from shared.core.broker_transport import Transport  # noqa: E402
from shared.core.db import make_engine, make_session_factory, updated_rows  # noqa: E402
from shared.models import TryOn  # noqa: E402

JOB_ID = "00000000-0000-0000-0000-000000000001"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _timed(n: int, body: Callable[[int], None]) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of this process."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        body(i)
    return (1000 * (time.process_time() - cpu) / n, 1000 * (time.perf_counter() - wall) / n)


def _statement(i: int) -> Any:
    return update(TryOn).where(TryOn.id == JOB_ID, TryOn.status.in_(("queued", "processing"))) \
        .values(attempt=i)


def _database_cases(sessions: sessionmaker[Session], pinging: sessionmaker[Session]) \
        -> dict[str, Callable[[int], None]]:
    now = datetime.now(UTC)

    def in_transaction(step: Callable[[Session, int], None], lock_first: bool = False,
                       factory: sessionmaker[Session] = sessions) -> Callable[[int], None]:
        def body(i: int) -> None:
            with factory.begin() as session:
                if lock_first:
                    session.scalars(select(TryOn).where(TryOn.id == JOB_ID)
                                    .with_for_update()).one()
                step(session, i)
        return body

    def orm_update(session: Session, i: int) -> None:
        session.execute(_statement(i))

    def core_update(session: Session, i: int) -> None:
        updated_rows(session, _statement(i))

    def audit_row(session: Session, i: int) -> None:
        audit.record(session, at=now, user_id="bench", action="bench.roundtrip",
                     subject_type="try_on", subject_id=JOB_ID, n=i)

    def select_one(factory: sessionmaker[Session]) -> Callable[[int], None]:
        def body(_i: int) -> None:
            with factory() as session:
                session.execute(text("SELECT 1"))
        return body

    return {
        "UPDATE, ORM-enabled (before)": in_transaction(orm_update),
        "UPDATE, Core in the session (now)": in_transaction(core_update),
        "row lock + UPDATE, ORM-enabled (before)": in_transaction(orm_update, lock_first=True),
        "row lock + UPDATE, Core (now)": in_transaction(core_update, lock_first=True),
        "audit row (Core, now)": in_transaction(audit_row),
        "checkout + SELECT 1, pre-ping (before)": select_one(pinging),
        "checkout + SELECT 1, no pre-ping (now)": select_one(sessions),
    }


def _publish_case(transport: type[Transport] | None, queue: str) -> Callable[[int], None]:
    conn = Connection(REDIS_URL, transport=transport)
    producer = conn.Producer(serializer="json")

    def body(i: int) -> None:
        producer.publish({"n": i}, routing_key=queue, exchange="")
    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="calls per case and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{'case':48s} {'CPU ms':>8s} {'wall ms':>8s}   ({args.n} calls, round)")
    with fresh_database("hf_roundtrip_bench") as url:
        engine, pinging_engine = make_engine(url), make_engine(url, pool_pre_ping=True)
        sessions, pinging = make_session_factory(engine), make_session_factory(pinging_engine)
        now = datetime.now(UTC)
        with sessions.begin() as session:
            session.add(TryOn(id=JOB_ID, user_id="bench", upload_id="bench",
                              hairstyle_id="bob", created_at=now, updated_at=now))
        queue = f"hf-roundtrip-bench-{uuid.uuid4().hex[:8]}"
        cases = _database_cases(sessions, pinging)
        cases["task publish, kombu's Redis transport (before)"] = _publish_case(None, queue)
        cases["task publish, one client per channel (now)"] = _publish_case(Transport, queue)
        try:
            for round_ in range(1, args.rounds + 1):
                for name, body in cases.items():
                    body(0)  # warm: connection, compiled-statement cache
                    cpu, wall = _timed(args.n, body)
                    print(f"{name:48s} {cpu:8.3f} {wall:8.3f}   round {round_}", flush=True)
        finally:
            with Connection(REDIS_URL) as conn:
                conn.default_channel.client.delete(queue)
            engine.dispose()
            pinging_engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
