"""tryons.run and tryons.complete called in this process, one job at a time, with
their parts wrapped and timed; plus micro-measurements of single steps."""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any
from unittest import mock

import httpx
from PIL import Image

from bench.tryon.config import Plan
from devstack.procs import wait_until
from shared.core.config import load_settings
from shared.fal.completions import Completion
from shared.services import Services
from shared.tryons import completion, results, state, submission
from shared.tryons import use_cases as tryons

# (module, name, label): each patched where its caller looks it up.
PARTS = (
    (submission, "_load_with_upload", "_load_with_upload (SELECT job + upload)"),
    (completion, "load_job", "load_job (SELECT job)"),
    (completion, "download_result", "download_result (result GET)"),
    (results, "render", "results.render (decode, thumbnail)"),
    (results, "sanitize", "sanitize (re-encode)"),
    (completion, "_succeed", "_succeed (row lock, UPDATE + audit, commit)"),
    (results, "write", "results.write (2 PUTs)"),
)


class Clock:
    """Calls, wall and CPU time per call path, collected by wrapping real functions
    (single-threaded use)."""

    def __init__(self) -> None:
        self.rec: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        self.path: list[str] = []

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            self.path.append(label)
            key = tuple(self.path)
            w, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                r = self.rec[key]
                r[0] += 1
                r[1] += time.perf_counter() - w
                r[2] += time.thread_time() - c
                self.path.pop()
        return timed

    def patch(self, es: contextlib.ExitStack, owner: Any, name: str, label: str) -> None:
        es.enter_context(mock.patch.object(owner, name, self.wrap(label, getattr(owner, name))))

    def table(self, n: int) -> dict[str, dict[str, float]]:
        """Per job; every path with children also gets a '(rest ...)' row: its own
        time outside the wrapped parts (DB round trips, ORM, Python)."""
        out: dict[str, dict[str, float]] = {}
        keys = sorted(self.rec)
        for key in keys:
            calls, wall, cpu = self.rec[key]
            out[" > ".join(key)] = {"calls_per_job": round(calls / n, 2),
                                    "wall_ms_per_job": round(wall / n * 1000, 2),
                                    "cpu_ms_per_job": round(cpu / n * 1000, 2)}
            kids = [k for k in keys if len(k) == len(key) + 1 and k[:-1] == key]
            if kids:
                out[" > ".join((*key, "(rest: DB round trips, ORM, Python)"))] = {
                    "calls_per_job": 1.0,
                    "wall_ms_per_job": round((wall - sum(self.rec[k][1] for k in kids)) / n * 1000, 2),
                    "cpu_ms_per_job": round((cpu - sum(self.rec[k][2] for k in kids)) / n * 1000, 2)}
        return out


def _as_worker(env: dict[str, str]) -> Any:
    """SSL_CERT_FILE = the emulator's CA bundle, as the worker has it (httpx reads it)."""
    return mock.patch.dict(os.environ, {"SSL_CERT_FILE": env["SSL_CERT_FILE"]})


def _instrument(es: contextlib.ExitStack, clock: Clock, svc: Services) -> None:
    for name in ("presign_get", "put_bytes"):
        clock.patch(es, svc.storage, name, f"S3 {name}")
    clock.patch(es, svc.fal, "submit", "fal submit (HTTPS to emulator)")
    for module, name, label in PARTS:
        clock.patch(es, module, name, label)
    clock.patch(es, httpx.Client, "__init__", "httpx.Client() built")


def component_profile(env: dict[str, str], plan: Plan, n: int) -> dict[str, Any]:
    """Against the same PostgreSQL, moto and emulator (latency 0). No Celery, no
    contention: the intrinsic cost of each step. Polling mode (PUBLIC_BASE_URL empty)
    so the emulator sends no webhook and the running worker does not touch these
    jobs; jobs are created with tryons.start and no dispatch."""
    clock = Clock()
    run = clock.wrap("tryons.run body", submission.run)
    complete = clock.wrap("tryons.complete body", completion.complete)
    load_job = state.load_job
    with _as_worker(env), contextlib.ExitStack() as es:
        svc = Services.from_settings(load_settings(dict(env, PUBLIC_BASE_URL="")))
        svc.dispatch = lambda *a, **k: True  # nothing reaches the broker
        _instrument(es, clock, svc)
        outcomes: Counter[str] = Counter()
        jobs = plan[: n + 1]
        for i, (user, upload_id, style) in enumerate(jobs):
            if i == 1:  # the first job warms connections and caches: not counted
                clock.rec.clear()
            # Created right before its run: a job left queued for longer than the
            # reconciler's grace would be re-sent to the running stack's worker,
            # which would take it (and this profile would time nothing).
            job = tryons.start(svc, user, upload_id=upload_id, key=None, hairstyle_id=style,
                               prompt=None, locale="en")
            run(svc, job.id)
            fresh = load_job(svc, job.id)
            request_id = fresh.fal_request_id if fresh else None
            if fresh is None or request_id is None:
                outcomes["not submitted"] += 1
                continue
            wait_until(lambda: svc.fal.status(request_id).completed, 20, 0.02)  # noqa: B023
            urls = tuple(svc.fal.result(request_id).image_urls)
            complete(svc, job.id, fresh.attempt, Completion(True, request_id, image_urls=urls))
            after = load_job(svc, job.id)
            outcomes[after.status if after else "gone"] += 1
        svc.engine.dispose()
    return {"jobs": len(jobs) - 1, "outcomes": dict(outcomes),
            "per_job": clock.table(max(1, len(jobs) - 1))}


def _timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
    fn()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return {"cpu_ms": round((time.process_time() - c0) / n * 1000, 2),
            "wall_ms": round((time.perf_counter() - w0) / n * 1000, 2)}


def micro_costs(env: dict[str, str], selfie: bytes) -> dict[str, Any]:
    """CPU costs of single steps of tryons.complete, measured in this process with the
    stack's settings."""
    max_pixels = load_settings(env).max_image_pixels
    with Image.open(io.BytesIO(selfie)) as probe:
        size = probe.size
    with _as_worker(env):
        return {
            "httpx.Client() with SSL_CERT_FILE bundle (download_result builds one per thread)":
                _timed(lambda: httpx.Client().close(), 20),
            f"decode + sanitize + thumbnail of a {size[0]}x{size[1]} result (results.render)":
                _timed(lambda: results.render(selfie, max_pixels), 10),
        }
