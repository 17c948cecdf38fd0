"""The offline fal.ai emulator, driven by the real, unmodified fal_client.SyncClient.

The client reaches the emulator over HTTPS by trusting its CA (SSL_CERT_FILE, set before the
client builds its httpx client) and by pointing fal_client.client.QUEUE_URL_FORMAT at it.
fal_client's own retries are switched off (MAX_ATTEMPTS = 1) except where a test shows
what they do; the emulator's `submits` counter proves how many POSTs each call made.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import fal_client
import fal_client.client as fal_module
import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fal_client import Completed, FalClientHTTPError, InProgress, Queued
from PIL import Image, ImageStat

from devstack.fal_emulator import FalEmulator, start_emulator_process
from devstack.procs import free_port

pytestmark = pytest.mark.integration

APP = "fal-ai/nano-banana/edit"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SELFIE = (FIXTURES / "astronaut.jpg").read_bytes()
PROMPT = "make the hair bright pink"


# ------------------------------------------------------------------ local servers


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return server


class ImageHost:
    """Serves the selfie behind a presigned-like URL: a token and an expiry, checked like S3."""

    TOKEN = "good-signature"

    def __init__(self) -> None:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                status, body, ctype = host.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _serve(Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, raw_path: str) -> tuple[int, bytes, str]:
        parts = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/not-an-image.jpg":
            return 200, b"this is not a JPEG", "image/jpeg"
        if parts.path != "/selfie.jpg":
            return 404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml"
        if query.get("X-Amz-Signature") != self.TOKEN:
            return 403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>", "application/xml"
        if float(query.get("X-Amz-Expires-At", "0")) < time.time():
            return 403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", \
                "application/xml"
        return 200, SELFIE, "image/jpeg"

    def presign(self, expires_in: float = 300, signature: str = TOKEN) -> str:
        expires_at = time.time() + expires_in
        return f"{self.base}/selfie.jpg?X-Amz-Expires-At={expires_at}&X-Amz-Signature={signature}"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Records every POST; answers with the queued status codes, then 200."""

    deliveries: list[Delivery] = field(default_factory=list)
    responses: deque[int] = field(default_factory=deque)
    cond: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.cond:
                    receiver.deliveries.append(Delivery(self.path, headers, body, time.time()))
                    status = receiver.responses.popleft() if receiver.responses else 200
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = _serve(Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/fal"
        return self

    def for_request(self, request_id: str) -> list[Delivery]:
        with self.cond:
            return [d for d in self.deliveries if d.headers.get("x-fal-webhook-request-id") == request_id]

    def wait_for(self, request_id: str, count: int = 1, timeout: float = 10.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.for_request(request_id)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{count} webhook(s) for {request_id} did not arrive")
                self.cond.wait(remaining)
        return self.for_request(request_id)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FalEmulator]:
    with FalEmulator(tmp_path_factory.mktemp("fal-emulator"), latency_seconds=0.3) as emu:
        yield emu


@pytest.fixture(scope="module")
def images() -> ImageHost:
    return ImageHost()


@pytest.fixture(scope="module")
def receiver() -> WebhookReceiver:
    return WebhookReceiver().start()


@pytest.fixture
def emu(emulator: FalEmulator, receiver: WebhookReceiver) -> FalEmulator:
    emulator.reset(config=True)
    emulator.configure(webhook_retry_delays=[0.1, 0.1])
    receiver.responses.clear()
    return emulator


@pytest.fixture
def fal(emu: FalEmulator, monkeypatch: pytest.MonkeyPatch) -> fal_client.SyncClient:
    """The real SyncClient; a new one per test, so its httpx client is built after SSL_CERT_FILE."""
    monkeypatch.setenv("SSL_CERT_FILE", str(emu.ca_path))
    monkeypatch.setattr(fal_module, "QUEUE_URL_FORMAT", emu.queue_url_format)
    monkeypatch.setattr(fal_module, "MAX_ATTEMPTS", 1)
    return fal_client.SyncClient(key="test")


@pytest.fixture
def raw(emu: FalEmulator) -> Iterator[httpx.Client]:
    """A plain HTTPS client for what fal_client hides (status codes, headers)."""
    ctx = ssl.create_default_context(cafile=str(emu.ca_path))
    with httpx.Client(verify=ctx, trust_env=False, timeout=10,
                      headers={"Authorization": "Key test"}) as client:
        yield client


def wait_completed(fal: fal_client.SyncClient, request_id: str, timeout: float = 10.0) -> Completed:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = fal.status(APP, request_id)
        if isinstance(status, Completed):
            return status
        time.sleep(0.05)
    raise AssertionError(f"{request_id} did not complete")


def verify_signature(jwks: dict[str, Any], delivery: Delivery, max_age: float = 300) -> None:
    """What a receiver must do: Ed25519 over request_id, user_id, timestamp and sha256(body)."""
    headers = delivery.headers
    timestamp = headers["x-fal-webhook-timestamp"]
    assert abs(time.time() - int(timestamp)) <= max_age
    message = "\n".join([headers["x-fal-webhook-request-id"], headers["x-fal-webhook-user-id"], timestamp,
                         hashlib.sha256(delivery.body).hexdigest()]).encode()
    signature = bytes.fromhex(headers["x-fal-webhook-signature"])
    for key in jwks["keys"]:
        raw_key = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw_key).verify(signature, message)
            return
        except InvalidSignature:
            continue
    raise AssertionError("webhook signature does not verify against the JWKS")


def model_errors(error: FalClientHTTPError) -> list[dict[str, Any]]:
    """fal_client stores a model error's `detail` list as the exception's `message` (typed str)."""
    detail: Any = error.message
    assert isinstance(detail, list), detail
    return detail


def top_third_mean(data: bytes) -> list[float]:
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        return ImageStat.Stat(rgb.crop((0, 0, rgb.width, rgb.height // 3))).mean


# ------------------------------------------------------------------ the happy path


def test_submit_poll_result_and_signed_webhook(fal: fal_client.SyncClient, emu: FalEmulator,
                                               raw: httpx.Client, images: ImageHost,
                                               receiver: WebhookReceiver) -> None:
    handle = fal.submit(APP, {"prompt": PROMPT, "image_urls": [images.presign()]}, webhook_url=receiver.url)

    # The URLs the emulator hands out are the ones fal_client builds itself: owner/alias only.
    base = f"{emu.queue_url_format}fal-ai/nano-banana/requests/{handle.request_id}"
    assert (handle.response_url, handle.status_url, handle.cancel_url) == (base, base + "/status",
                                                                          base + "/cancel")
    assert fal.get_handle(APP, handle.request_id).status_url == handle.status_url

    first = raw.get(handle.status_url)
    assert first.status_code == 202 and first.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert isinstance(fal.status(APP, handle.request_id), Queued | InProgress)

    done = wait_completed(fal, handle.request_id)
    assert done.error is None and done.metrics["inference_time"] >= 0.25
    assert raw.get(handle.status_url).status_code == 200
    with_logs = fal.status(APP, handle.request_id, with_logs=True)
    assert isinstance(with_logs, Completed) and with_logs.logs

    result = fal.result(APP, handle.request_id)
    (image,) = result["images"]
    assert image["content_type"] == "image/jpeg" and result["description"]
    assert image["url"].startswith(f"{emu.base_url}/media/")
    download = raw.get(image["url"], headers={"Authorization": ""})  # the media host needs no key
    assert download.status_code == 200 and download.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(download.content)) as decoded:
        assert decoded.size == (image["width"], image["height"])
    before, after = top_third_mean(SELFIE), top_third_mean(download.content)
    assert sum(abs(a - b) for a, b in zip(before, after, strict=True)) > 60, (before, after)

    (delivery,) = receiver.wait_for(handle.request_id)
    jwks = raw.get(emu.jwks_url).json()
    assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
    verify_signature(jwks, delivery)
    assert delivery.headers["x-fal-webhook-user-id"] == "fal-emulator-user"
    body = delivery.json
    assert body["status"] == "OK" and body["request_id"] == handle.request_id
    assert body["gateway_request_id"] and body["payload"] == result
    tampered = Delivery(delivery.path, delivery.headers, delivery.body.replace(b"OK", b"ER"), delivery.at)
    with pytest.raises(AssertionError, match="does not verify"):
        verify_signature(jwks, tampered)

    stats = emu.stats()
    assert (stats["submits"], stats["enqueued"], stats["webhooks_sent"]) == (1, 1, 1)
    assert stats["result_calls"] == 1 and stats["status_calls"] >= 3
    assert stats["requests"][handle.request_id]["status"] == "COMPLETED"


def test_missing_or_empty_key_is_401(fal: fal_client.SyncClient, emu: FalEmulator, raw: httpx.Client) -> None:
    for value in ("", "Key", "Bearer abc"):
        response = raw.post(f"{emu.base_url}/{APP}", json={"prompt": "x"}, headers={"Authorization": value})
        assert response.status_code == 401
    handle_url = f"{emu.queue_url_format}fal-ai/nano-banana/requests/x/status"
    assert raw.get(handle_url, headers={"Authorization": ""}).status_code == 401
    with pytest.raises(httpx.LocalProtocolError):  # fal_client sends "Key " - never reaches a server
        fal_client.SyncClient(key="").submit(APP, {"prompt": "x"})
    stats = emu.stats()
    assert (stats["submits"], stats["enqueued"], stats["auth_failures"]) == (3, 0, 4)


def test_queue_urls_with_the_endpoint_path_or_unknown_ids_are_404(
        fal: fal_client.SyncClient, emu: FalEmulator, raw: httpx.Client, images: ImageHost) -> None:
    handle = fal.submit(APP, {"prompt": PROMPT, "image_urls": [images.presign()]})
    wrong = f"{emu.queue_url_format}{APP}/requests/{handle.request_id}/status"
    assert raw.get(wrong).status_code == 404
    with pytest.raises(FalClientHTTPError) as info:
        fal.status(APP, "00000000-0000-0000-0000-000000000000")
    assert info.value.status_code == 404


# ------------------------------------------------------------------ cancel


def test_cancel(fal: fal_client.SyncClient, emu: FalEmulator, raw: httpx.Client, images: ImageHost) -> None:
    emu.configure(latency_seconds=30)
    handle = fal.submit(APP, {"prompt": PROMPT, "image_urls": [images.presign()]})
    response = raw.put(handle.cancel_url)
    assert (response.status_code, response.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    status = fal.status(APP, handle.request_id)
    assert isinstance(status, Completed) and status.error_type == "request_cancelled"

    again = raw.put(handle.cancel_url)
    assert (again.status_code, again.json()["status"]) == (400, "ALREADY_COMPLETED")
    with pytest.raises(FalClientHTTPError) as info:
        fal.cancel(APP, handle.request_id)
    assert info.value.status_code == 400
    with pytest.raises(FalClientHTTPError) as info:
        fal.cancel(APP, "00000000-0000-0000-0000-000000000000")
    assert info.value.status_code == 404

    other = fal.submit(APP, {"prompt": PROMPT, "image_urls": [images.presign()]})
    fal.cancel(APP, other.request_id)  # the real client's cancel() returns nothing
    assert emu.stats()["cancels"] == 5


# ------------------------------------------------------------------ submit faults


EXPECTED_SUBMIT_FAULTS: dict[str, tuple[int, str | None]] = {
    "429": (429, "rate_limited"),
    "500_internal": (500, "internal_error"),
    "503_runner": (503, "runner_scheduling_failure"),
    "504_startup": (504, "startup_timeout"),
    "504_request_timeout": (504, "request_timeout"),
    "400": (400, "bad_request"),
    "401": (401, None),
    "403": (403, None),
    "404": (404, None),
    "422_content_policy": (422, None),
    "retryable_header": (503, "runner_disconnected"),
    "502_nginx": (502, None),
}


@pytest.mark.parametrize("fault", sorted(EXPECTED_SUBMIT_FAULTS))
def test_submit_fault_surfaces_as_http_error(fault: str, fal: fal_client.SyncClient, emu: FalEmulator,
                                             images: ImageHost) -> None:
    emu.configure(submit_faults=[fault])
    with pytest.raises(FalClientHTTPError) as info:
        fal.submit(APP, {"prompt": PROMPT, "image_urls": [images.presign()]})
    status_code, error_type = EXPECTED_SUBMIT_FAULTS[fault]
    error = info.value
    assert (error.status_code, error.error_type) == (status_code, error_type)
    headers = {k.lower(): v for k, v in error.response_headers.items()}
    if fault == "504_request_timeout":
        assert headers["x-fal-request-timeout-type"] == "user"
    if fault == "retryable_header":
        assert headers["x-fal-retryable"] == "true"
    if fault == "422_content_policy":
        # fal_client puts the whole `detail` list into the exception's message.
        assert isinstance(error.message, list)
        assert model_errors(error)[0]["type"] == "content_policy_violation"
    assert ("x-fal-request-id" in headers) == (fault != "502_nginx")
    stats = emu.stats()
    assert (stats["submits"], stats["enqueued"]) == (1, 0)
    assert stats["faults_injected"] == {fault: 1}


def test_malformed_and_dropped_submits(fal: fal_client.SyncClient, emu: FalEmulator,
                                       images: ImageHost) -> None:
    args = {"prompt": PROMPT, "image_urls": [images.presign()]}
    emu.configure(submit_faults=["malformed", "drop", "drop_after_enqueue"])
    with pytest.raises(json.JSONDecodeError):  # a ValueError, not a FalClientError
        fal.submit(APP, args)
    with pytest.raises(httpx.RemoteProtocolError):
        fal.submit(APP, args)
    with pytest.raises(httpx.RemoteProtocolError):  # ... although this one was enqueued
        fal.submit(APP, args)
    stats = emu.stats()
    assert (stats["submits"], stats["enqueued"]) == (3, 1)


def test_fal_clients_own_retries_can_enqueue_twice(fal: fal_client.SyncClient, emu: FalEmulator,
                                                  images: ImageHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fal_module, "MAX_ATTEMPTS", 3)
    args = {"prompt": PROMPT, "image_urls": [images.presign()]}
    emu.configure(submit_faults=["429", "502_nginx"])
    fal.submit(APP, args)  # retried twice, then accepted
    assert (emu.stats()["submits"], emu.stats()["enqueued"]) == (3, 1)

    emu.reset()
    emu.configure(submit_faults=["drop_after_enqueue"])
    handle = fal.submit(APP, args)  # a transport error is retried: the job now exists twice
    stats = emu.stats()
    assert (stats["submits"], stats["enqueued"]) == (2, 2)
    assert handle.request_id in stats["requests"]

    emu.reset()
    emu.configure(submit_faults=["503_runner", "500_internal"])
    for _ in range(2):  # server-made 5xx (x-fal-request-id present) are not retried
        with pytest.raises(FalClientHTTPError):
            fal.submit(APP, args)
    assert emu.stats()["submits"] == 2


# ------------------------------------------------------------------ job faults and failing inputs


@pytest.mark.parametrize(("url_kind", "error_type"), [
    ("expired", "file_download_error"),
    ("tampered", "file_download_error"),
    ("missing", "file_download_error"),
    ("unreachable", "file_download_error"),
    ("not_an_image", "image_load_error"),
])
def test_unusable_input_url_completes_with_an_error(url_kind: str, error_type: str,
                                                    fal: fal_client.SyncClient, emu: FalEmulator,
                                                    images: ImageHost, receiver: WebhookReceiver) -> None:
    emu.configure(latency_seconds=0.05)
    url = {
        "expired": images.presign(expires_in=-1),
        "tampered": images.presign(signature="forged"),
        "missing": f"{images.base}/gone.jpg",
        "unreachable": f"http://127.0.0.1:{free_port()}/selfie.jpg",
        "not_an_image": f"{images.base}/not-an-image.jpg",
    }[url_kind]
    handle = fal.submit(APP, {"prompt": PROMPT, "image_urls": [url]}, webhook_url=receiver.url)
    status = wait_completed(fal, handle.request_id)
    assert status.error_type == error_type and status.error
    with pytest.raises(FalClientHTTPError) as info:
        fal.result(APP, handle.request_id)
    assert info.value.status_code == 422
    (detail,) = model_errors(info.value)
    assert detail["type"] == error_type and detail["loc"] == ["body", "image_urls", 0]
    (delivery,) = receiver.wait_for(handle.request_id)
    assert delivery.json["status"] == "ERROR" and delivery.json["payload"]["detail"][0]["type"] == error_type


@pytest.mark.parametrize("fault", ["content_policy", "no_media", "error_internal", "malformed_result",
                                   "garbage_result"])
def test_job_faults(fault: str, fal: fal_client.SyncClient, emu: FalEmulator, images: ImageHost,
                    receiver: WebhookReceiver) -> None:
    emu.configure(latency_seconds=0.05, job_faults=[fault])
    handle = fal.submit(APP, {"prompt": PROMPT, "image_urls": [images.presign()]}, webhook_url=receiver.url)
    status = wait_completed(fal, handle.request_id)
    (delivery,) = receiver.wait_for(handle.request_id)
    hook = delivery.json
    if fault in ("content_policy", "no_media"):
        expected = {"content_policy": "content_policy_violation", "no_media": "no_media_generated"}[fault]
        assert status.error_type == expected
        with pytest.raises(FalClientHTTPError) as info:
            fal.result(APP, handle.request_id)
        assert info.value.status_code == 422 and model_errors(info.value)[0]["type"] == expected
        assert hook["status"] == "ERROR" and hook["error"] == "Invalid status code: 422"
    elif fault == "error_internal":
        assert status.error_type == "internal_error"
        with pytest.raises(FalClientHTTPError) as info:
            fal.result(APP, handle.request_id)
        assert (info.value.status_code, info.value.error_type) == (500, "internal_error")
        assert hook["status"] == "ERROR"
    elif fault == "malformed_result":
        assert status.error is None
        assert "url" not in fal.result(APP, handle.request_id)["images"][0]
        assert hook["status"] == "OK"
    else:
        assert status.error is None
        with pytest.raises(json.JSONDecodeError):
            fal.result(APP, handle.request_id)
        assert hook["payload"] is None and hook["payload_error"]
    assert emu.stats()["faults_injected"] == {fault: 1}


def test_never_complete_stays_in_progress_until_cancelled(fal: fal_client.SyncClient, emu: FalEmulator,
                                                          images: ImageHost) -> None:
    emu.configure(latency_seconds=0.05, job_faults=["never_complete"])
    handle = fal.submit(APP, {"prompt": PROMPT, "image_urls": [images.presign()]})
    time.sleep(0.6)  # twelve times its latency
    assert isinstance(fal.status(APP, handle.request_id), InProgress)
    assert emu.stats()["in_progress"] >= 1
    fal.cancel(APP, handle.request_id)
    assert wait_completed(fal, handle.request_id).error_type == "request_cancelled"


# ------------------------------------------------------------------ queueing


def test_queue_positions_and_start_timeout(fal: fal_client.SyncClient, emu: FalEmulator,
                                           images: ImageHost) -> None:
    emu.configure(latency_seconds=1.5, max_concurrency=1)
    args = {"prompt": PROMPT, "image_urls": [images.presign()]}
    running = fal.submit(APP, args)
    waiting = fal.submit(APP, args)
    timing_out = fal.submit(APP, args, start_timeout=1.1)
    time.sleep(0.1)
    assert isinstance(fal.status(APP, running.request_id), InProgress)
    assert fal.status(APP, waiting.request_id) == Queued(position=0)
    assert fal.status(APP, timing_out.request_id) == Queued(position=1)
    status = wait_completed(fal, timing_out.request_id, timeout=5)
    assert status.error_type == "request_timeout"
    with pytest.raises(FalClientHTTPError) as info:
        fal.result(APP, timing_out.request_id)
    assert info.value.status_code == 504
    assert info.value.response_headers["x-fal-request-timeout-type"] == "user"
    fal.cancel(APP, running.request_id)  # frees the slot: the waiting job starts
    time.sleep(0.1)
    assert isinstance(fal.status(APP, waiting.request_id), InProgress)
    fal.cancel(APP, waiting.request_id)


# ------------------------------------------------------------------ webhook delivery


def test_webhook_is_retried_on_non_2xx_then_given_up(fal: fal_client.SyncClient, emu: FalEmulator,
                                                     images: ImageHost, receiver: WebhookReceiver,
                                                     raw: httpx.Client) -> None:
    emu.configure(latency_seconds=0.05)
    args = {"prompt": PROMPT, "image_urls": [images.presign()]}
    receiver.responses.extend([500, 503])
    handle = fal.submit(APP, args, webhook_url=receiver.url)
    deliveries = receiver.wait_for(handle.request_id, count=3)
    assert len({d.body for d in deliveries}) == 1  # same body every time, freshly signed
    jwks = raw.get(emu.jwks_url).json()
    for delivery in deliveries:
        verify_signature(jwks, delivery)

    receiver.responses.extend([500, 500, 500])
    failing = fal.submit(APP, args, webhook_url=receiver.url)
    receiver.wait_for(failing.request_id, count=3)
    time.sleep(0.3)
    assert len(receiver.for_request(failing.request_id)) == 3
    stats = emu.stats()
    assert (stats["webhook_attempts"], stats["webhooks_sent"], stats["webhooks_failed"]) == (6, 1, 1)
    attempts = [d["status_code"] for d in stats["requests"][failing.request_id]["webhook_deliveries"]]
    assert attempts == [500, 500, 500]


def test_webhook_modes(fal: fal_client.SyncClient, emu: FalEmulator, images: ImageHost,
                       receiver: WebhookReceiver) -> None:
    args = {"prompt": PROMPT, "image_urls": [images.presign()]}
    emu.configure(latency_seconds=0.05, webhook_mode="early")
    early = fal.submit(APP, args, webhook_url=receiver.url)
    # The completion webhook was delivered before submit() returned the request id.
    (delivery,) = receiver.for_request(early.request_id)
    assert delivery.json["status"] == "OK"

    emu.configure(webhook_mode="duplicate")
    twice = fal.submit(APP, args, webhook_url=receiver.url)
    first, second = receiver.wait_for(twice.request_id, count=2)
    assert first.body == second.body

    emu.configure(webhook_mode="none")
    silent = fal.submit(APP, args, webhook_url=receiver.url)

    emu.configure(webhook_mode="late", webhook_late_seconds=0.6)
    late = fal.submit(APP, args, webhook_url=receiver.url)
    completed_at = time.time()
    wait_completed(fal, late.request_id)
    assert receiver.for_request(late.request_id) == []
    (late_delivery,) = receiver.wait_for(late.request_id)
    assert late_delivery.at - completed_at >= 0.55
    assert isinstance(fal.status(APP, silent.request_id), Completed)
    assert receiver.for_request(silent.request_id) == []


# ------------------------------------------------------------------ control plane, load, subprocess


def test_control_endpoints(emu: FalEmulator, raw: httpx.Client) -> None:
    bad = raw.post(f"{emu.base_url}/_emulator/config", json={"submit_faults": ["nope"]})
    assert bad.status_code == 400 and "unknown submit_faults" in bad.json()["detail"]
    good = raw.post(f"{emu.base_url}/_emulator/config", json={"latency_seconds": 2, "job_faults": "no_media"})
    assert good.status_code == 200 and good.json()["job_faults"] == ["no_media"]
    assert raw.get(f"{emu.base_url}/_emulator/config").json()["latency_seconds"] == 2.0
    stats = raw.get(f"{emu.base_url}/_emulator/stats?requests=0").json()
    assert "requests" not in stats and stats["submits"] == 0
    assert raw.post(f"{emu.base_url}/_emulator/reset", json={"config": True}).status_code == 200
    assert emu.stats()["config"]["job_faults"] == []
    with pytest.raises(ValueError, match="unknown knob"):
        emu.configure(latency=1)


def test_many_requests_in_flight(fal: fal_client.SyncClient, emu: FalEmulator, images: ImageHost) -> None:
    """Hundreds of jobs in flight at once; one SyncClient per thread, because one SyncClient
    shared by many threads intermittently breaks its own connections (EBADF, bad TLS record,
    "peer closed connection") - reproduced with httpx.Client(transport=BackupDomainTransport())
    and never with a plain shared httpx.Client."""
    count = 300
    emu.configure(latency_seconds=4.0)
    args = {"prompt": PROMPT, "image_urls": [images.presign()]}
    local = threading.local()

    def submit(_: int) -> Any:
        if not hasattr(local, "client"):
            local.client = fal_client.SyncClient(key="test")
        return local.client.submit(APP, args)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        handles = list(pool.map(submit, range(count)))
    elapsed = time.perf_counter() - started
    in_flight = emu.stats(include_requests=False)
    assert in_flight["enqueued"] == count
    assert in_flight["in_queue"] + in_flight["in_progress"] == count
    print(f"\n{count} submits in {elapsed:.2f} s = {count / elapsed:.0f} submits/s")
    deadline = time.monotonic() + 30
    while emu.stats(include_requests=False)["completed"] < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert emu.stats(include_requests=False)["in_progress"] == 0
    assert fal.result(APP, handles[-1].request_id)["images"][0]["url"]


CHILD_CLIENT = """
import json, sys
import fal_client  # FAL_QUEUE_RUN_HOST and SSL_CERT_FILE come from the environment
handle = fal_client.submit(sys.argv[1], {"prompt": "blonde bob", "image_urls": [sys.argv[2]]})
result = fal_client.result(sys.argv[1], handle.request_id)
print(json.dumps({"status_url": handle.status_url, "result": result}))
"""


def test_subprocess_emulator_and_env_configured_client(tmp_path: Path, images: ImageHost) -> None:
    with start_emulator_process(tmp_path / "emu", latency=0.2) as proc:
        assert proc.alive() and proc.ca_path.is_file()
        proc.configure(job_faults=[])
        env = {**os.environ, **proc.client_env()}
        out = subprocess.run([sys.executable, "-c", CHILD_CLIENT, APP, images.presign()], env=env,
                             capture_output=True, text=True, timeout=60, check=True)
        reply = json.loads(out.stdout.strip().splitlines()[-1])
        assert reply["status_url"].startswith(proc.base_url + "/fal-ai/nano-banana/requests/")
        assert reply["result"]["images"][0]["url"].startswith(proc.base_url + "/media/")
        assert proc.stats()["submits"] == 1
        log_text = (tmp_path / "emu" / "fal-emulator.log").read_text()
        assert f"listening on port {proc.port}" in log_text
    assert proc.process.returncode == 0  # SIGTERM is a clean shutdown
