"""One presign, instrumented: the real functions on its path wrapped, each wrapper
recording wall time (perf_counter) and this thread's CPU time (thread_time)."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import botocore.auth
import marshmallow
import redis
from sqlalchemy import event

from bench.common.procfs import cpu_delta, cpu_snapshot, pids_by_comm, system_busy_seconds
from bench.presign.request import WsgiCaller
from shared.access import daily_quota
from shared.access.auth import TokenVerifier
from shared.access.quota import QuotaService
from shared.storage.s3 import S3Storage

AUTH = "auth: JWT verify (HS256)"
IP_RATE, USER_RATE = "redis: rate limit (ip)", "redis: rate limit (user)"
QUOTA = "db: daily presign quota upsert (inside the transaction)"
REDIS_RT = "redis: round trips (inside the above)"
SIGN, SIGV4 = "sign: boto3 generate_presigned_url", "sign: SigV4 maths (inside the above)"
LOAD, DUMP = "marshmallow: load request", "marshmallow: dump response"
DB_BLOCK = "db: transaction block (total)"
PING, COMMIT, ROLLBACK = "db: pool pre-ping", "db: COMMIT round trip", "db: reset-on-return rollback"
STATEMENTS = "db: statement round trips"


@contextlib.contextmanager
def noise_gauge(out: dict[str, Any]) -> Iterator[None]:
    """Cores used by processes other than this one, PostgreSQL and Redis while the
    block ran (other people's jobs on the shared machine)."""
    ours = pids_by_comm("postgres", "redis-server")
    snap0, busy0 = cpu_snapshot(ours), system_busy_seconds()
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    try:
        yield
    finally:
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        servers = sum(cpu_delta(snap0, cpu_snapshot(list(snap0)))) / os.sysconf("SC_CLK_TCK")
        other = system_busy_seconds() - busy0 - own - servers
        out["own_cpu_cores"] = round(own / wall, 2)
        out["pg_redis_cores"] = round(servers / wall, 2)
        out["other_cores"] = round(max(0.0, other) / wall, 2)


class Timers:
    """Wall and CPU ns per label, and per (outer, inner) label for wrapped calls made
    while another wrapped call or block was open (single-threaded use)."""

    def __init__(self) -> None:
        self.wall_ns: dict[str, int] = defaultdict(int)
        self.cpu_ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.nested_wall_ns: dict[tuple[str, str], int] = defaultdict(int)
        self.nested_cpu_ns: dict[tuple[str, str], int] = defaultdict(int)
        self.open: list[str] = []

    def add(self, label: str, wall_ns: int, cpu_ns: int) -> None:
        self.wall_ns[label] += wall_ns
        self.cpu_ns[label] += cpu_ns
        self.calls[label] += 1
        for outer in set(self.open) - {label}:
            self.nested_wall_ns[(outer, label)] += wall_ns
            self.nested_cpu_ns[(outer, label)] += cpu_ns

    @contextlib.contextmanager
    def span(self, label: str) -> Iterator[None]:
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        self.open.append(label)
        try:
            yield
        finally:
            self.open.pop()
            self.add(label, time.perf_counter_ns() - t0, time.thread_time_ns() - c0)

    def wrap(self, owner: Any, attr: str, label: str) -> Callable[[], None]:
        """Time every call of owner.attr; returns the undo."""
        original = getattr(owner, attr)

        def wrapper(*a: Any, **kw: Any) -> Any:
            with self.span(label):
                return original(*a, **kw)

        return _patch(owner, attr, wrapper)

    def wrap_block(self, owner: Any, attr: str, label: str) -> Callable[[], None]:
        """Time the `with owner.attr(...):` blocks (a context-manager factory)."""
        original = getattr(owner, attr)

        @contextlib.contextmanager
        def block(*a: Any, **kw: Any) -> Iterator[Any]:
            with self.span(label), original(*a, **kw) as value:
                yield value

        return _patch(owner, attr, block)

    def listen_statements(self, engine: Any, label: str) -> Callable[[], None]:
        """Time every cursor execute of the engine (a round trip each)."""
        start: dict[int, tuple[int, int]] = {}

        def before(_conn: Any, cursor: Any, *_a: Any) -> None:
            start[id(cursor)] = (time.perf_counter_ns(), time.thread_time_ns())

        def after(_conn: Any, cursor: Any, *_a: Any) -> None:
            t0, c0 = start.pop(id(cursor))
            self.add(label, time.perf_counter_ns() - t0, time.thread_time_ns() - c0)

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)

        def undo() -> None:
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)
        return undo


def _patch(owner: Any, attr: str, replacement: Any) -> Callable[[], None]:
    original, had_own = getattr(owner, attr), attr in vars(owner)
    setattr(owner, attr, replacement)
    return lambda: setattr(owner, attr, original) if had_own else delattr(owner, attr)


def instrumented_run(app: Any, caller: WsgiCaller, n: int) -> dict[str, Any]:
    svc = app.extensions["hairfluencer"].svc
    timers = Timers()
    undo = [
        timers.wrap(TokenVerifier, "verify", AUTH),
        timers.wrap(QuotaService, "check_ip_rate", IP_RATE),
        timers.wrap(QuotaService, "check_user_rate", USER_RATE),
        timers.wrap(daily_quota, "consume", QUOTA),
        timers.wrap(redis.Redis, "execute_command", REDIS_RT),
        timers.wrap(S3Storage, "presign_put", SIGN),
        timers.wrap(botocore.auth.S3SigV4QueryAuth, "add_auth", SIGV4),
        timers.wrap(marshmallow.Schema, "load", LOAD),
        timers.wrap(marshmallow.Schema, "dump", DUMP),
        timers.wrap(svc.engine.dialect, "do_ping", PING),
        timers.wrap(svc.engine.dialect, "do_commit", COMMIT),
        timers.wrap(svc.engine.dialect, "do_rollback", ROLLBACK),
        timers.wrap_block(svc.engine, "begin", DB_BLOCK),  # shared/uploads/use_cases.presign
        timers.listen_statements(svc.engine, STATEMENTS),
    ]
    try:
        t_total = c_total = 0
        for _ in range(n):
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            caller()
            t_total += time.perf_counter_ns() - t0
            c_total += time.thread_time_ns() - c0
    finally:
        for u in reversed(undo):
            u()
    calls = {k: v / n for k, v in timers.calls.items()}
    wall_top, wall_detail = _components(timers.wall_ns, timers.nested_wall_ns, calls, n, t_total)
    cpu_top, cpu_detail = _components(timers.cpu_ns, timers.nested_cpu_ns, calls, n, c_total)
    return {"n": n, "total_us": round(t_total / n / 1000, 1),
            "total_cpu_us": round(c_total / n / 1000, 1),
            "breakdown_us": wall_top, "breakdown_cpu_us": cpu_top,
            "detail_us": wall_detail, "detail_cpu_us": cpu_detail,
            "calls_per_request": {k: round(v, 2) for k, v in calls.items()}}


def _components(ns: dict[str, int], nested_ns: dict[tuple[str, str], int], calls: dict[str, float],
                n: int, total_ns: int) -> tuple[dict[str, float], dict[str, float]]:
    """Top-level components (adding up to the total, with the rest as a residual) and
    the details inside them, in µs per request."""
    def g(k: str) -> float:
        return ns.get(k, 0) / n / 1000

    def c(k: str) -> float:
        return calls.get(k, 0.0)

    # The daily quota is an upsert inside the transaction (shared/access/daily_quota.py).
    db_total = g(DB_BLOCK)
    db_parts = sum(g(k) for k in (PING, COMMIT, STATEMENTS, ROLLBACK))
    redis_total = g(IP_RATE) + g(USER_RATE)
    top = {
        AUTH: g(AUTH),
        f"redis: {c(IP_RATE) + c(USER_RATE):.0f} rate-limit hits": redis_total,
        "db: quota upsert + upload + audit insert, commit": db_total,
        SIGN: g(SIGN),
        "marshmallow: load + dump": g(LOAD) + g(DUMP),
    }
    top["flask / werkzeug / smorest / rest"] = total_ns / n / 1000 - sum(top.values())
    detail = {
        f"redis: {c(REDIS_RT):.0f} EVALSHA round trips (redis-py execute_command)": g(REDIS_RT),
        "redis: limits library + key building around them": redis_total - g(REDIS_RT),
        "db: pool pre-ping (empty query ';')": g(PING),
        f"db: BEGIN + {c(STATEMENTS):.0f} statement round trips (cursor.execute: erasure check, "
        "quota upsert, 2 INSERT)": g(STATEMENTS),
        QUOTA: g(QUOTA),
        "db: COMMIT round trip (waits for the WAL flush)": g(COMMIT),
        "db: reset-on-return rollback (no round trip)": g(ROLLBACK),
        "db: SQLAlchemy Core, connection and pool (no I/O)": db_total - db_parts,
        "sign: SigV4 maths in botocore (S3SigV4QueryAuth.add_auth)": g(SIGV4),
        "sign: botocore request pipeline around it": g(SIGN) - g(SIGV4),
    }
    return ({k: round(v, 1) for k, v in top.items()}, {k: round(v, 1) for k, v in detail.items()})
