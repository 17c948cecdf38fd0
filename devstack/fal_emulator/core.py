"""The emulator's state: knobs, counters, the queue and each job's lifecycle; independent of HTTP.

A job is IN_QUEUE for at least `queue_seconds` (longer while `max_concurrency` jobs run),
then IN_PROGRESS for `latency_seconds` while a worker thread runs the emulated model, then
COMPLETED, when its webhook is scheduled.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import ssl
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack.fal_emulator.config import EmulatorConfig
from devstack.fal_emulator.jobs import (
    COMPLETED,
    IN_PROGRESS,
    IN_QUEUE,
    Job,
    Outcome,
    compact_json,
    infra_error,
    lifecycle_seconds,
)
from devstack.fal_emulator.model import EmulatedModel
from devstack.fal_emulator.scheduler import Scheduler
from devstack.fal_emulator.webhooks import WebhookSender

log = logging.getLogger(__name__)


class EmulatorCore:
    """Queue, jobs, faults and counters; the model and the webhooks are its helpers."""

    def __init__(self, config: EmulatorConfig, state_dir: Path, signing_key: Ed25519PrivateKey,
                 client_verify: ssl.SSLContext, workers: int) -> None:
        self.config = config
        self.initial_config = config.as_dict()
        self.state_dir = state_dir
        self.media_dir = state_dir / "media"
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self.signing_key = signing_key
        self.base_url = ""  # set once the server listens
        self.closed = False
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.waiting: deque[Job] = deque()
        self.running = 0
        self.epoch_ids: set[str] = set()  # request ids shown by stats() since the last reset
        self.counters: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self._seq = itertools.count()
        self.scheduler = Scheduler()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fal-emulator-job")
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        self.http = httpx.Client(verify=client_verify, trust_env=False, follow_redirects=True, limits=limits)
        self.model = EmulatedModel(self.media_dir, self.http)
        self.webhooks = WebhookSender(signing_key, config, self.scheduler, self.http, self.lock,
                                      self.counters)

    def close(self) -> None:
        self.closed = True
        self.scheduler.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.webhooks.close()
        self.http.close()

    # -- knobs and counters

    def configure(self, knobs: Mapping[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.config.update(knobs)
            return self.config.as_dict()

    def reset(self, restore_config: bool = False) -> None:
        with self.lock:
            self.counters.clear()
            self.faults_injected.clear()
            self.epoch_ids.clear()
            if restore_config:
                fresh = EmulatorConfig()
                fresh.update(self.initial_config)
                self.config.update(fresh.as_dict())

    def stats(self, include_requests: bool = True) -> dict[str, Any]:
        with self.lock:
            # Like every counter: jobs submitted since the last reset.
            states = Counter(self.jobs[rid].state for rid in self.epoch_ids if rid in self.jobs)
            out: dict[str, Any] = {
                key: self.counters[key]
                for key in ("submits", "enqueued", "status_calls", "result_calls", "cancels", "webhooks_sent",
                            "webhook_attempts", "webhooks_failed", "media_downloads", "auth_failures")
            }
            out["faults_injected"] = dict(self.faults_injected)
            out["in_queue"] = states[IN_QUEUE]
            out["in_progress"] = states[IN_PROGRESS]
            out["completed"] = states[COMPLETED]
            out["config"] = self.config.as_dict()
            if include_requests:
                out["requests"] = {rid: self.jobs[rid].info() for rid in self.epoch_ids if rid in self.jobs}
            return out

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] += n

    # -- submit

    def take_submit_fault(self) -> str | None:
        with self.lock:
            self.counters["submits"] += 1
            if not self.config.submit_faults:
                return None
            fault = self.config.submit_faults.pop(0)
            self.faults_injected[fault] += 1
            return fault

    def enqueue(self, app: str, base: str, arguments: Any, webhook_url: str | None,
                headers: Mapping[str, str]) -> tuple[Job, int]:
        """Create a job (IN_QUEUE) and schedule it; returns it and its queue position."""
        now = time.monotonic()
        with self.lock:
            cfg = self.config
            fault = cfg.job_faults.pop(0) if cfg.job_faults else None
            if fault:
                self.faults_injected[fault] += 1
            request_id = str(uuid.uuid4())
            job = Job(request_id=request_id, app=app, base=base, arguments=arguments,
                      webhook_url=webhook_url, fault=fault, latency=cfg.latency_seconds,
                      webhook_mode=cfg.webhook_mode,
                      honour_cancel=cfg.honour_cancel, download_timeout=cfg.download_timeout,
                      submitted_at=time.time(), seq=next(self._seq),
                      priority=headers.get("x-fal-queue-priority"))
            job.media_expiration_seconds = lifecycle_seconds(
                headers.get("x-fal-object-lifecycle-preference"))
            job.store_io = headers.get("x-fal-store-io", "1").strip() != "0"
            timeout = headers.get("x-fal-request-timeout")
            if timeout:
                with contextlib.suppress(ValueError):
                    job.start_timeout = float(timeout)
                    job.start_deadline = now + job.start_timeout
            self.jobs[request_id] = job
            self.epoch_ids.add(request_id)
            self.counters["enqueued"] += 1
            position = self.queue_position(job)
            if job.webhook_mode == "early":
                # Processed inside the submit call (see submit handler); never queued.
                job.state, job.started_at = IN_PROGRESS, time.time()
                return job, position
            queue_seconds = cfg.queue_seconds
        self.scheduler.call_later(queue_seconds, self._ready, job)
        if job.start_deadline is not None:
            self.scheduler.call_later(job.start_deadline - now, self._start_deadline_passed, job)
        return job, position

    def run_early(self, job: Job) -> None:
        """webhook_mode "early": run the job now and deliver its webhook before returning."""
        if job.fault == "never_complete":
            return
        outcome = self.model.compute(job, self.base_url)
        with self.lock:
            if job.state == COMPLETED:
                return
            self._complete(job, outcome)
        self.webhooks.deliver(job, chain=0, attempt=0)

    # -- lifecycle

    def queue_position(self, job: Job) -> int:  # lock held
        return sum(1 for other in self.jobs.values() if other.state == IN_QUEUE and other.seq < job.seq)

    def _ready(self, job: Job) -> None:
        with self.lock:
            if job.state != IN_QUEUE:
                return
            limit = self.config.max_concurrency
            if limit and self.running >= limit:
                self.waiting.append(job)
                return
            self._start(job)

    def _start(self, job: Job) -> None:  # lock held
        job.state, job.started_at = IN_PROGRESS, time.time()
        job.log("Request started")
        if job.fault == "never_complete":
            job.log("Generating...")
            return  # holds no slot: a stuck job must not stall the whole emulator
        job.holds_slot = True
        self.running += 1
        self.pool.submit(self._work, job)

    def _release(self, job: Job) -> None:  # lock held
        if job.holds_slot:
            job.holds_slot = False
            self.running -= 1
        limit = self.config.max_concurrency
        while self.waiting and (not limit or self.running < limit):
            nxt = self.waiting.popleft()
            if nxt.state == IN_QUEUE:
                self._start(nxt)

    def _start_deadline_passed(self, job: Job) -> None:
        with self.lock:
            if job.state != IN_QUEUE:
                return
            with contextlib.suppress(ValueError):
                self.waiting.remove(job)
            outcome = infra_error(504, "Request timed out", "request_timeout",
                                  {"X-Fal-Request-Timeout-Type": "user"})
            self._complete(job, outcome)
        self.webhooks.schedule(job)

    def _work(self, job: Job) -> None:
        try:
            outcome = self.model.compute(job, self.base_url)
        except Exception:  # noqa: BLE001 - reported as the model's internal error
            if self.closed:
                return
            log.exception("emulated model failed on %s", job.request_id)
            outcome = infra_error(500, "Internal server error", "internal_error")
        delay = (job.started_at or time.time()) + job.latency - time.time()
        self.scheduler.call_later(delay, self._finish, job, outcome)

    def _finish(self, job: Job, outcome: Outcome) -> None:
        with self.lock:
            if job.state == COMPLETED:  # cancelled meanwhile
                return
            self._complete(job, outcome)
        self.webhooks.schedule(job)

    def _complete(self, job: Job, outcome: Outcome) -> None:  # lock held
        job.outcome = outcome
        job.state = COMPLETED
        job.completed_at = time.time()
        if not job.store_io:
            job.arguments = None  # X-Fal-Store-IO: 0: the payload is not kept
        if job.media_expiration_seconds is not None:
            self.scheduler.call_later(job.media_expiration_seconds, self._expire_media, job)
        job.log("Request finished" if outcome.error is None else f"Request failed: {outcome.error_type}")
        self._release(job)

    def _expire_media(self, job: Job) -> None:
        with self.lock:
            names, job.media_files = job.media_files, []
            job.media_expired = True
        for name in names:
            with contextlib.suppress(OSError):
                (self.media_dir / name).unlink()

    def result_expired(self, job: Job) -> bool:
        return (job.completed_at is not None
                and time.time() - job.completed_at > self.config.result_retention_seconds)

    def cancel(self, job: Job) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.counters["cancels"] += 1
            if job.state == COMPLETED:
                return 400, {"status": "ALREADY_COMPLETED"}
            job.cancel_requested = True
            if job.state == IN_QUEUE or job.honour_cancel:
                with contextlib.suppress(ValueError):
                    self.waiting.remove(job)
                body = {"detail": "Request was cancelled", "error_type": "request_cancelled"}
                self._complete(job, Outcome(400, compact_json(body), {}, error="Request was cancelled",
                                            error_type="request_cancelled", webhook_status="ERROR",
                                            webhook_error="Request was cancelled", payload=body))
                deliver = self.config.webhook_on_cancel
            else:
                deliver = False
        if deliver:
            self.webhooks.schedule(job)
        return 202, {"status": "CANCELLATION_REQUESTED"}

    # -- keys

    def jwks(self) -> dict[str, Any]:
        """The JWKS document of the webhook signing key."""
        return self.webhooks.jwks()
