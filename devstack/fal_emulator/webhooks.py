"""fal's webhooks: the Ed25519 key and its JWKS, the signed body, delivery modes and retries.

A webhook is signed over `{request_id}\n{user_id}\n{timestamp}\n{sha256(body) hex}`, and
the signature travels in `X-Fal-Webhook-Signature` with the other `X-Fal-Webhook-*` headers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devstack.fal_emulator.config import EmulatorConfig
from devstack.fal_emulator.jobs import Job, compact_json
from devstack.fal_emulator.scheduler import Scheduler
from devstack.fal_emulator.tls import write_private


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The webhook signing key, kept in the state dir so that restarts keep the JWKS stable."""
    path = state_dir / "webhook-ed25519-key.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, Ed25519PrivateKey):
            return key
    key = Ed25519PrivateKey.generate()
    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return key


class WebhookSender:
    """Delivers a completed job's webhook as its webhook_mode says, retrying failures.

    Counts attempts, deliveries and give-ups in `counters` (under `lock`, shared with the
    emulator's core) and records each attempt in `job.deliveries`.
    """

    def __init__(self, signing_key: Ed25519PrivateKey, config: EmulatorConfig, scheduler: Scheduler,
                 http: httpx.Client, lock: threading.RLock, counters: Counter[str]) -> None:
        self.signing_key = signing_key
        self.config = config
        self.scheduler = scheduler
        self.http = http
        self.lock = lock
        self.counters = counters
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fal-emulator-webhook")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def schedule(self, job: Job) -> None:
        if not job.webhook_url:
            return
        mode = job.webhook_mode
        if mode == "none":
            job.deliveries.append({"suppressed": True})
            return
        if mode == "late":
            self.scheduler.call_later(self.config.webhook_late_seconds, self._deliver_async, job, 0, 0)
            return
        self._deliver_async(job, 0, 0)
        if mode == "duplicate":
            self.scheduler.call_later(self.config.webhook_duplicate_seconds, self._deliver_async,
                                      job, 1, 0)

    def _deliver_async(self, job: Job, chain: int, attempt: int) -> None:
        with contextlib.suppress(RuntimeError):  # pool shut down
            self.pool.submit(self.deliver, job, chain, attempt)

    def body(self, job: Job) -> bytes:
        outcome = job.outcome
        assert outcome is not None
        body: dict[str, Any] = {"request_id": job.request_id, "gateway_request_id": job.request_id,
                                "status": outcome.webhook_status, "payload": outcome.payload}
        if outcome.webhook_error:
            body["error"] = outcome.webhook_error
        if outcome.payload_error:
            body["payload_error"] = outcome.payload_error
        return compact_json(body)

    def jwks(self) -> dict[str, Any]:
        raw = self.signing_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)
        kid = hashlib.sha256(raw).hexdigest()[:16]
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "use": "sig",
                          "alg": "EdDSA"}]}

    def sign(self, request_id: str, user_id: str, timestamp: str, body: bytes) -> str:
        message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        return self.signing_key.sign(message).hex()

    def deliver(self, job: Job, chain: int, attempt: int) -> None:
        assert job.webhook_url
        body = self.body(job)
        user_id = self.config.user_id
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fal-emulator-webhook/1.0",
            "X-Fal-Webhook-Request-Id": job.request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": self.sign(job.request_id, user_id, timestamp, body),
        }
        record: dict[str, Any] = {"chain": chain, "attempt": attempt, "at": time.time()}
        try:
            response = self.http.post(job.webhook_url, content=body, headers=headers, timeout=15.0)
            record["status_code"] = response.status_code
            delivered = 200 <= response.status_code < 300
        except httpx.HTTPError as exc:
            record["error"] = type(exc).__name__
            delivered = False
        with self.lock:
            job.deliveries.append(record)
            self.counters["webhook_attempts"] += 1
            delays = self.config.webhook_retry_delays
            if delivered:
                self.counters["webhooks_sent"] += 1
            elif attempt >= len(delays):
                self.counters["webhooks_failed"] += 1
        if not delivered and attempt < len(delays):
            self.scheduler.call_later(delays[attempt], self._deliver_async, job, chain, attempt + 1)

