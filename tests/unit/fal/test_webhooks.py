"""A fal webhook delivery (shared/fal/webhooks.py): our job token, fal's Ed25519
signature against fal's JWKS (fetched through the verifier's `fetch`), the body."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.core.untrusted_json import UnsafeJson
from shared.fal.completions import Completion
from shared.fal.webhooks import (
    JWKS_REFRESH_INTERVAL_SECONDS,
    FalWebhookVerifier,
    VerifierUnavailable,
    WebhookRejected,
    accept_delivery,
    job_token,
)

SECRET = "webhook-secret"
JOB = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def jwk(key: Ed25519PrivateKey, kid: str | None = None) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    entry = {"kty": "OKP", "crv": "Ed25519",
             "x": base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    return {**entry, "kid": kid} if kid else entry


class FalKeys:
    """fal's JWKS endpoint: the key set it publishes now, and how often it was asked."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys: list[dict[str, Any]] = [jwk(k) for k in keys]
        self.down = False
        self.fetches = 0

    def __call__(self, url: str) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise ValueError("unreachable")  # what http_fetch raises for a bad answer
        return {"keys": self.keys}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier_for(keys: FalKeys) -> tuple[FalWebhookVerifier, Clock]:
    verifier = FalWebhookVerifier("https://rest.fal.ai/.well-known/jwks.json", fetch=keys)
    clock = Clock()
    verifier._jwks._clock = clock  # the cache's monotonic clock, so a test can move it
    return verifier, clock


def delivery(key: Ed25519PrivateKey, body: bytes, *, request_id: str = "req-1",
             ts: int | None = None, attempt: int = 1, token: str | None = None
             ) -> tuple[dict[str, str], dict[str, str]]:
    ts = int(time.time()) if ts is None else ts
    message = f"{request_id}\nfal-user\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    headers = {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": "fal-user",
               "X-Fal-Webhook-Timestamp": str(ts),
               "X-Fal-Webhook-Signature": key.sign(message).hex()}
    query = {"job": JOB, "attempt": str(attempt),
             "token": token if token is not None else job_token(SECRET, JOB, attempt)}
    return query, headers


OK_BODY = json.dumps({"request_id": "not-the-signed-one", "status": "OK",
                      "payload": {"images": [{"url": "https://v3.fal.media/x.jpg"}]}}).encode()


def test_a_delivery_from_fal_for_our_job_is_accepted():
    key = Ed25519PrivateKey.generate()
    verifier, _ = verifier_for(FalKeys(key))
    query, headers = delivery(key, OK_BODY, attempt=3)
    assert accept_delivery(verifier, SECRET, query, headers, OK_BODY) == (
        JOB, 3, Completion(True, "req-1"))  # the signed request id, not the body's
    error_body = json.dumps({"request_id": "req-1", "status": "ERROR", "payload": {
        "detail": [{"type": "content_policy_violation"}]}}).encode()
    query, headers = delivery(key, error_body)
    assert accept_delivery(verifier, SECRET, query, headers, error_body)[2] == Completion(
        False, "req-1", error_type="content_policy_violation")


def rejection(verifier: FalWebhookVerifier, query, headers, body: bytes) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(WebhookRejected) as error:
        accept_delivery(verifier, SECRET, query, headers, body)
    return error.value.reason


def test_deliveries_that_are_not_ours_or_not_fal_s_are_rejected():
    key = Ed25519PrivateKey.generate()
    keys = FalKeys(key)
    verifier, _ = verifier_for(keys)
    query, headers = delivery(key, OK_BODY)
    assert rejection(verifier, {**query, "attempt": "x"}, headers, OK_BODY) == "attempt"
    assert rejection(verifier, {**query, "attempt": "2"}, headers, OK_BODY) == "job token"
    assert rejection(verifier, {**query, "job": "other"}, headers, OK_BODY) == "job"
    # Range-checked before use: int() would take these, or overflow on them.
    for attempt in ("+1", " 1", "\u0661", "1" * 5000, "-1", "1_0"):
        assert rejection(verifier, {**query, "attempt": attempt}, headers, OK_BODY) == "attempt"
    assert rejection(verifier, {**query, "job": str(uuid.uuid4())}, headers, OK_BODY) == "job token"
    assert rejection(verifier, {k: v for k, v in query.items() if k != "token"}, headers,
                     OK_BODY) == "job token"
    assert keys.fetches == 0  # refused on our token, before fal's keys are asked for
    assert rejection(verifier, query, headers, OK_BODY + b" ") == "signature"
    assert rejection(verifier, query, {**headers, "X-Fal-Webhook-Request-Id": "req-2"},
                     OK_BODY) == "signature"
    assert rejection(verifier, query, {**headers, "X-Fal-Webhook-Signature": "zz"},
                     OK_BODY) == "signature encoding"
    assert rejection(verifier, query, {**headers, "X-Fal-Webhook-Timestamp": "soon"},
                     OK_BODY) == "timestamp"
    forged = delivery(Ed25519PrivateKey.generate(), OK_BODY)
    assert rejection(verifier, *forged, OK_BODY) == "signature"
    for ts in (int(time.time()) - 301, int(time.time()) + 301):
        assert rejection(verifier, *delivery(key, OK_BODY, ts=ts), OK_BODY) == "stale timestamp"
    assert rejection(verifier, *delivery(key, b"[1, 2]"), b"[1, 2]") == "body"
    for huge in ("9" * 5000, "1" + "0" * 400):  # float(now) - int(...) overflowed
        assert rejection(verifier, query, {**headers, "X-Fal-Webhook-Timestamp": huge},
                         OK_BODY) == "timestamp"
    assert keys.fetches == 1


@pytest.mark.parametrize("body", [
    b"not json", b"\xff\xfe", b"[" * 3000 + b"]" * 3000, b'{"a": 1, "a": 2}', b'{"x": NaN}',
    b'{"x": 1e999}', b'{"x": ' + b"9" * 5000 + b"}", b'{"error": "\\u0000"}',
    b'{"error": "\\ud800"}'])
def test_a_signed_body_past_our_limits_is_refused_after_verification(body):
    """fal's signature holds, yet the body breaks a limit: UnsafeJson (422/400 at the
    API), never a RecursionError or a ValueError deep in the completion code."""
    key = Ed25519PrivateKey.generate()
    verifier, _ = verifier_for(FalKeys(key))
    with pytest.raises(UnsafeJson):
        accept_delivery(verifier, SECRET, *delivery(key, body), body)
    with pytest.raises(WebhookRejected, match="not configured"):
        accept_delivery(verifier, "", *delivery(key, OK_BODY, token=job_token("", JOB, 1)),
                        OK_BODY)


def test_fal_s_keys_unavailable_means_deliver_again_later():
    key = Ed25519PrivateKey.generate()
    keys = FalKeys(key)
    keys.down = True
    verifier, clock = verifier_for(keys)
    with pytest.raises(VerifierUnavailable):
        accept_delivery(verifier, SECRET, *delivery(key, OK_BODY), OK_BODY)
    assert keys.fetches == 1
    with pytest.raises(VerifierUnavailable):  # not fetched again at once
        accept_delivery(verifier, SECRET, *delivery(key, OK_BODY), OK_BODY)
    assert keys.fetches == 1
    keys.down = False
    clock.now += JWKS_REFRESH_INTERVAL_SECONDS
    assert accept_delivery(verifier, SECRET, *delivery(key, OK_BODY), OK_BODY)[0] == JOB
    keys.down = True  # from now on the last good set keeps working
    clock.now += 10 * JWKS_REFRESH_INTERVAL_SECONDS
    assert accept_delivery(verifier, SECRET, *delivery(key, OK_BODY), OK_BODY)[0] == JOB


def test_a_set_without_ed25519_keys_is_refused():
    key = Ed25519PrivateKey.generate()
    keys = FalKeys()
    keys.keys = [{"kty": "oct", "k": "c2VjcmV0"}]  # nothing to verify Ed25519 with
    verifier, _ = verifier_for(keys)
    with pytest.raises(VerifierUnavailable, match="no Ed25519 key"):
        accept_delivery(verifier, SECRET, *delivery(key, OK_BODY), OK_BODY)


def test_a_set_without_ed25519_keys_is_fetched_again_after_the_refetch_interval():
    key = Ed25519PrivateKey.generate()
    keys = FalKeys()
    keys.keys = [{"kty": "oct", "k": "c2VjcmV0"}]
    verifier, clock = verifier_for(keys)
    with pytest.raises(VerifierUnavailable):
        accept_delivery(verifier, SECRET, *delivery(key, OK_BODY), OK_BODY)
    keys.keys = [jwk(key)]  # fal publishes its key again
    clock.now += JWKS_REFRESH_INTERVAL_SECONDS
    assert accept_delivery(verifier, SECRET, *delivery(key, OK_BODY), OK_BODY)[0] == JOB


def test_a_rotated_key_is_fetched_once_and_forgers_cannot_make_us_fetch_more():
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = FalKeys(old)
    verifier, clock = verifier_for(keys)
    accept_delivery(verifier, SECRET, *delivery(old, OK_BODY), OK_BODY)
    assert keys.fetches == 1
    keys.keys = [jwk(old), jwk(new, kid="2")]  # fal rotates
    clock.now += JWKS_REFRESH_INTERVAL_SECONDS
    accept_delivery(verifier, SECRET, *delivery(new, OK_BODY), OK_BODY)
    assert keys.fetches == 2
    # Forgeries right after: refused on the cached keys, no fetch per forgery.
    for _ in range(5):
        assert rejection(verifier, *delivery(Ed25519PrivateKey.generate(), OK_BODY),
                         OK_BODY) == "signature"
    assert keys.fetches == 2
    accept_delivery(verifier, SECRET, *delivery(old, OK_BODY), OK_BODY)  # both keys work
