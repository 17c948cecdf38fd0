"""How fal failures are classified (the retry policy of SPEC §5) and how fal's
webhook signatures and our job tokens are checked."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.core.errors import ERROR_KINDS
from shared.core.i18n import MESSAGES
from shared.fal.gateway import classify_completion_error, classify_http, parse_output
from shared.fal.webhooks import (
    FalWebhookVerifier,
    SignedDelivery,
    WebhookRejected,
    check_job_token,
    job_token,
    webhook_url,
)


@pytest.mark.parametrize(("status", "headers", "error_type", "model", "code", "retriable"), [
    (429, {}, None, None, "fal.rate_limited", True),
    (500, {}, "internal_error", None, "fal.unavailable", True),
    (503, {}, "runner_unavailable", None, "fal.unavailable", True),
    (504, {}, "startup_timeout", None, "fal.unavailable", True),
    (504, {"X-Fal-Request-Timeout-Type": "user"}, "request_timeout", None, "fal.timeout", False),
    (500, {"X-Fal-Retryable": "true"}, None, None, "fal.unavailable", True),
    (400, {}, "bad_request", None, "fal.rejected", False),
    (401, {}, None, None, "fal.unauthorized", False),
    (403, {}, None, None, "fal.unauthorized", False),
    (404, {}, None, None, "fal.rejected", False),
    (422, {}, None, "content_policy_violation", "fal.content_policy", False),
    (422, {}, None, "image_load_error", "fal.rejected", False),
    # fal could not fetch our link (storage throttled, link expired while queued):
    # a new submission signs a fresh one.
    (422, {}, None, "file_download_error", "fal.input_unreachable", True),
])
def test_http_failures_are_classified(status, headers, error_type, model, code, retriable):
    failure = classify_http(status, headers, error_type, model)
    assert (failure.code, failure.retriable) == (code, retriable)


def test_completion_errors_are_classified():
    assert classify_completion_error("content_policy_violation").code == "fal.content_policy"
    assert classify_completion_error("runner_disconnected").retriable
    assert not classify_completion_error("something_new").retriable
    assert classify_completion_error("file_download_error").retriable


def test_every_job_code_has_messages_in_both_locales():
    for code in ERROR_KINDS:
        assert set(MESSAGES[code]) == {"en", "es"}, code


def test_output_parsing():
    assert parse_output({"images": [{"url": "https://fal.media/x.jpg"}]}).image_urls == [
        "https://fal.media/x.jpg"]
    for bad in ({}, {"images": None}, {"images": [{}]}, "text", {"images": []}):
        with pytest.raises(Exception) as info:
            parse_output(bad)
        assert info.value.code in ("fal.bad_result", "fal.no_result")  # type: ignore[attr-defined]


def test_job_token_binds_job_and_attempt():
    url = webhook_url("https://api.example.com/", "s3cret", "job-1", 2)
    assert url.startswith("https://api.example.com/v1/webhooks/fal?job=job-1&attempt=2&token=")
    check_job_token("s3cret", "job-1", 2, job_token("s3cret", "job-1", 2))
    for job, attempt in (("job-2", 2), ("job-1", 3)):
        with pytest.raises(WebhookRejected):
            check_job_token("s3cret", job, attempt, job_token("s3cret", "job-1", 2))
    with pytest.raises(WebhookRejected):  # non-ASCII input is a refusal, not a crash
        check_job_token("s3cret", "job-1", 2, "é" * 64)
    with pytest.raises(WebhookRejected):  # no secret configured: no webhook is accepted
        check_job_token("", "job-1", 2, job_token("", "job-1", 2))


class _Verifier(FalWebhookVerifier):
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._public = [key.public_key()]

    def _keys(self, refresh: bool = False):  # type: ignore[no-untyped-def]
        return self._public


def _signed(key: Ed25519PrivateKey, body: bytes, ts: int) -> SignedDelivery:
    message = f"req-1\nuser-1\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    return SignedDelivery("req-1", "user-1", str(ts), key.sign(message).hex(), body)


def test_webhook_signature_checks():
    key = Ed25519PrivateKey.generate()
    verifier = _Verifier(key)
    body = json.dumps({"request_id": "req-1", "status": "OK"}).encode()
    now = int(time.time())
    verifier.verify(_signed(key, body, now))
    with pytest.raises(WebhookRejected, match="stale"):
        verifier.verify(_signed(key, body, now - 301))
    with pytest.raises(WebhookRejected, match="stale"):
        verifier.verify(_signed(key, body, now + 301))
    tampered = _signed(key, body, now)
    with pytest.raises(WebhookRejected, match="signature"):
        verifier.verify(SignedDelivery(tampered.request_id, tampered.user_id, tampered.timestamp,
                                       tampered.signature_hex, body + b" "))
    other = _signed(Ed25519PrivateKey.generate(), body, now)
    with pytest.raises(WebhookRejected, match="signature"):
        verifier.verify(other)
