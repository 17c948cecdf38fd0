"""Round trips per presign: Redis commands counted from redis-py, PostgreSQL ones from
a libpq protocol trace (bench/results/presign-libpq-trace.txt)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import psycopg
import redis
from sqlalchemy import event

from bench.common.paths import REPO_ROOT, RESULTS_DIR
from bench.presign.request import WsgiCaller


def count_redis_commands(caller: WsgiCaller, n: int) -> dict[str, Any]:
    seen: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    original = redis.Redis.execute_command

    def counting(self: Any, *a: Any, **kw: Any) -> Any:
        seen[str(a[0])] += 1
        if str(a[0]).upper() in ("EVALSHA", "EVAL") and len(a) > 3 and int(a[2]) >= 1:
            k = str(a[3])
            k = re.sub(r"bench-[0-9a-f]+-\d+", "{user}", k).replace("127.0.0.1", "{ip}")
            keys[k] += 1
        return original(self, *a, **kw)

    redis.Redis.execute_command = counting  # type: ignore[method-assign]
    try:
        for _ in range(n):
            caller()
    finally:
        redis.Redis.execute_command = original  # type: ignore[method-assign]
    return {"n": n, "commands_per_request": {k: v / n for k, v in seen.items()},
            "keys_per_request": {k: v / n for k, v in keys.items()},
            "round_trips_per_request": sum(seen.values()) / n}


def count_pg_round_trips(app: Any, caller: WsgiCaller, n: int) -> dict[str, Any]:
    """libpq trace of n presigns: ReadyForQuery messages = round trips."""
    engine = app.extensions["hairfluencer"].svc.engine
    trace_path = RESULTS_DIR / "presign-libpq-trace.txt"
    f = trace_path.open("w")

    def on_connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.pgconn.trace(f.fileno())
        dbapi_conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    engine.dispose()
    event.listen(engine, "connect", on_connect)
    try:
        caller()  # opens (and traces) the connection
        f.flush()
        start = trace_path.stat().st_size
        for _ in range(n):
            caller()
        f.flush()
    finally:
        event.remove(engine, "connect", on_connect)
        engine.dispose()
        f.close()
    with trace_path.open() as fh:
        fh.seek(start)
        lines = fh.read().splitlines()
    ready = sum(1 for ln in lines if ln.startswith("B") and "ReadyForQuery" in ln)
    return {"n": n, "round_trips_per_request": ready / n,
            "statements_per_request": {k: v / n for k, v in _statements(lines).most_common()},
            "trace_file": str(trace_path.relative_to(REPO_ROOT))}


def _label(sql: str) -> str:
    words = sql.strip().strip('"').split()
    return " ".join(words[:3]) if words else "(empty)"


def _statements(lines: list[str]) -> Counter[str]:
    """Each round trip (a simple Query, or Parse/Bind.../Sync) labelled by its statement."""
    names: dict[str, str] = {}
    kinds: Counter[str] = Counter()
    pending: str | None = None
    for ln in lines:
        parts = ln.split("\t")
        if len(parts) < 3 or parts[0] != "F":
            continue
        msg, rest = parts[2], (parts[3].strip() if len(parts) > 3 else "")
        if msg == "Query":
            sql = rest.strip('"')
            kinds["ping (empty query ';')" if sql == ";" else _label(sql)] += 1
        elif msg == "Parse":
            name, _, sql = rest.partition('" "')
            name = name.strip('"')
            if name:
                names[name] = _label(sql)
                pending = pending or f"PREPARE {_label(sql)}"
            else:
                pending = pending or _label(sql)
        elif msg == "Bind":
            stmt = rest.split('" "', 1)[1].split('"', 1)[0] if '" "' in rest else ""
            if not (pending and pending.startswith("PREPARE")):
                pending = names.get(stmt, stmt) if stmt else pending
        elif msg == "Sync":
            kinds[pending or "?"] += 1
            pending = None
    return kinds
