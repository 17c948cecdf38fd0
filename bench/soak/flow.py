"""One user session of the app, through the real HTTP API: presign -> PUT to the
presigned URL (exactly the signed headers) -> confirm -> poll the upload until it is
validated -> for each chosen style, POST /v1/try-ons with an Idempotency-Key, poll
GET /v1/try-ons/{id} (If-None-Match, honouring Retry-After) until it is terminal,
and fetch the result, as devstack/client.py does.

Every request is recorded (kind, status, latency); so is every flow's outcome
(upload ready, try-on finished) with its time. A step that fails ends the session."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

# What each kind of request answers when all is well; anything else is an error.
EXPECTED = {"presign": {201}, "put": {200}, "confirm": {202}, "upload poll": {200, 304},
            "try-on": {202}, "try-on poll": {200, 304}, "result": {200}, "hairstyles": {200}}
KINDS = tuple(k for k in EXPECTED if k != "hairstyles")
# Requests to our API (the others go to S3 on presigned URLs).
API_KINDS = ("presign", "confirm", "upload poll", "try-on", "try-on poll", "hairstyles")
MAX_POLL_SLEEP = 2.0


class SessionEnded(Exception):
    """A step failed (recorded already), a poll ran out of time, or the traffic is over."""


@dataclass(frozen=True)
class Limits:
    upload_ready_s: float  # confirm -> ready, polled
    tryon_done_s: float  # POST -> succeeded/failed, polled
    stop_at: float  # wall clock after which no session makes another request


class Recorder:
    """Appends one JSON line per request / flow outcome to a file, from any thread,
    and counts requests against the run's bound."""

    def __init__(self, path: str, t0: float, max_requests: int) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()
        self.t0, self.max_requests = t0, max_requests
        self.requests = 0

    def budget_left(self) -> bool:
        return self.requests < self.max_requests

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")

    def request(self, kind: str, status: int | str, started: float, seconds: float) -> None:
        with self._lock:
            self.requests += 1
        self.write({"t": round(started + seconds - self.t0, 3), "kind": kind, "status": status,
                    "ok": status in EXPECTED[kind], "ms": round(seconds * 1000, 2)})

    def outcome(self, flow: str, outcome: str, ok: bool, seconds: float) -> None:
        self.write({"t": round(time.time() - self.t0, 3), "flow": flow, "outcome": outcome,
                    "ok": ok, "ms": round(seconds * 1000, 1)})

    def close(self) -> None:
        self._file.close()


class Session:
    """One user's session; `run()` never raises for an HTTP failure (it is recorded)."""

    def __init__(self, api: httpx.Client, s3: httpx.Client, rec: Recorder, limits: Limits,
                 token: str, selfie: bytes, styles: list[str], key_prefix: str) -> None:
        self.api, self.s3, self.rec, self.limits = api, s3, rec, limits
        self.auth = {"Authorization": f"Bearer {token}"}
        self.selfie, self.styles, self.key_prefix = selfie, styles, key_prefix

    def call(self, kind: str, send: Callable[[], httpx.Response]) -> httpx.Response:
        """One request, recorded; SessionEnded unless it answered as expected."""
        if time.time() >= self.limits.stop_at or not self.rec.budget_left():
            raise SessionEnded("traffic over")
        wall, t0 = time.time(), time.perf_counter()
        try:
            response = send()
        except httpx.HTTPError as exc:
            self.rec.request(kind, type(exc).__name__, wall, time.perf_counter() - t0)
            raise SessionEnded(kind) from None
        self.rec.request(kind, response.status_code, wall, time.perf_counter() - t0)
        if response.status_code not in EXPECTED[kind]:
            raise SessionEnded(f"{kind} answered {response.status_code}")
        return response

    def run(self) -> str:
        """The session's end: 'done', or why it stopped."""
        try:
            upload_id = self._upload()
            for n, style in enumerate(self.styles):
                self._try_on(upload_id, style, f"{self.key_prefix}-{n}")
        except SessionEnded as end:
            return str(end)
        return "done"

    def _upload(self) -> str:
        data = self.selfie
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        issued = self.call("presign", lambda: self.api.post(
            "/v1/uploads/presign", headers=self.auth,
            json={"contentType": "image/jpeg", "contentLength": len(data),
                  "checksum": checksum})).json()
        self.call("put", lambda: self.s3.put(issued["uploadUrl"], content=data,
                                             headers=issued["headers"]))
        self.call("confirm", lambda: self.api.post("/v1/uploads/confirm", headers=self.auth,
                                                   json={"key": issued["key"]}))
        started = time.perf_counter()
        body = self._poll("upload poll", f"/v1/uploads/{issued['uploadId']}",
                          {"ready", "rejected"}, self.limits.upload_ready_s)
        waited = time.perf_counter() - started
        if body is None:
            self.rec.outcome("upload", "timeout", False, waited)
            raise SessionEnded("upload not ready in time")
        self.rec.outcome("upload", body["status"], body["status"] == "ready", waited)
        if body["status"] != "ready":
            raise SessionEnded(f"upload {body['status']}")
        return str(issued["uploadId"])

    def _try_on(self, upload_id: str, style: str, idempotency_key: str) -> None:
        started = time.perf_counter()
        job = self.call("try-on", lambda: self.api.post(
            "/v1/try-ons", headers={**self.auth, "Idempotency-Key": idempotency_key},
            json={"uploadId": upload_id, "hairstyleId": style, "locale": "en"})).json()
        body = self._poll("try-on poll", f"/v1/try-ons/{job['jobId']}",
                          {"succeeded", "failed"}, self.limits.tryon_done_s)
        took = time.perf_counter() - started
        if body is None:
            self.rec.outcome("try-on", "timeout", False, took)
            raise SessionEnded("try-on not finished in time")
        self.rec.outcome("try-on", body["status"], body["status"] == "succeeded", took)
        if body["status"] != "succeeded":
            raise SessionEnded("try-on failed")
        self.call("result", lambda: self.s3.get(body["resultUrl"]))

    def _poll(self, kind: str, path: str, done: set[str], limit: float) -> dict[str, Any] | None:
        """GET path until its status is in `done` (its body), or None after `limit` s;
        a 304 keeps the last body; sleeps Retry-After (at most 2 s), else 0.5 s."""
        deadline = time.monotonic() + limit
        etag, body = None, None
        while time.monotonic() < deadline:
            headers = {**self.auth, **({"If-None-Match": etag} if etag else {})}
            response = self.call(kind, lambda h=headers: self.api.get(path, headers=h))  # type: ignore[misc]
            if response.status_code == 200:
                body, etag = response.json(), response.headers.get("ETag")
                if body["status"] in done:
                    return body
            pause = min(float(response.headers.get("Retry-After", "0.5")), MAX_POLL_SLEEP)
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        return None
