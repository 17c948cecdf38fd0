"""The clients: `POST /v1/try-ons` (with an Idempotency-Key, as the app sends) from a
pool of threads, open loop (Run 1: as fast as they go) or closed loop (Run 2: each
thread waits for its job in the table before it starts the next)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import psycopg

from bench.common.database import pg_url
from bench.tryon.config import Plan


@dataclass
class Post:
    index: int
    user: str
    t_send: float = 0.0  # wall clock
    latency: float = 0.0
    status: int | str = 0
    job_id: str | None = None


def post_tryon(api: httpx.Client, token: str, upload_id: str, style: str, key: str,
               rec: Post) -> None:
    rec.t_send = time.time()
    t0 = time.perf_counter()
    try:
        r = api.post("/v1/try-ons", headers={"Authorization": f"Bearer {token}",
                                             "Idempotency-Key": key},
                     json={"uploadId": upload_id, "hairstyleId": style})
        rec.status = r.status_code
        if r.status_code == 202:
            rec.job_id = r.json()["jobId"]
    except httpx.HTTPError as exc:
        rec.status = type(exc).__name__
    rec.latency = time.perf_counter() - t0


def _run_pool(threads: int, work: Callable[[], None], deadline: float) -> None:
    pool = [threading.Thread(target=work, daemon=True, name=f"client-{n}") for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(max(0.1, deadline - time.monotonic()))


class _Jobs:
    """Hands the planned jobs out to client threads, each once, and POSTs them."""

    def __init__(self, plan: Plan, tokens: dict[str, str], tag: str) -> None:
        self.plan, self.tokens, self.tag = plan, tokens, tag
        self.recs = [Post(i, user) for i, (user, _, _) in enumerate(plan)]
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def post_next(self, api: httpx.Client) -> Post | None:
        """POST the next job not yet taken; None when all are."""
        with self._lock:
            i = next(self._counter)
        if i >= len(self.plan):
            return None
        user, upload_id, style = self.plan[i]
        post_tryon(api, self.tokens[user], upload_id, style, f"{self.tag}-{i}", self.recs[i])
        return self.recs[i]


def fire_all(base: str, plan: Plan, tokens: dict[str, str], threads: int,
             tag: str, timeout: float) -> list[Post]:
    """POST every planned job from `threads` client threads, as fast as they go."""
    jobs = _Jobs(plan, tokens, tag)
    start = threading.Barrier(threads)

    def work() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=base, timeout=60, limits=limits) as api:
            start.wait()
            while jobs.post_next(api) is not None:
                pass

    _run_pool(threads, work, time.monotonic() + timeout)
    return jobs.recs


def _wait_finished(conn: psycopg.Connection, job_id: str, timeout: float = 60) -> bool:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        row = conn.execute("SELECT status FROM try_ons WHERE id = %s", (job_id,)).fetchone()
        if row and row[0] in ("succeeded", "failed"):
            return True
        time.sleep(0.02)
    return False


def closed_loop(base: str, db: str, plan: Plan, tokens: dict[str, str], concurrency: int,
                tag: str, timeout: float) -> tuple[list[Post], list[str]]:
    """`concurrency` threads, each POSTing a job and waiting (60 s at most) until it
    finished; returns the posts and the jobs that did not finish in time."""
    jobs = _Jobs(plan, tokens, tag)
    timeouts: list[str] = []
    deadline = time.monotonic() + timeout

    def work() -> None:
        with httpx.Client(base_url=base, timeout=30) as api, \
                psycopg.connect(pg_url(db), autocommit=True) as conn:
            while time.monotonic() < deadline:
                rec = jobs.post_next(api)
                if rec is None:
                    return
                if rec.job_id is not None and not _wait_finished(conn, rec.job_id):
                    timeouts.append(rec.job_id)

    _run_pool(concurrency, work, deadline)
    return jobs.recs, timeouts
