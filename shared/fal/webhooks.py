"""Verifying fal.ai webhooks, and the job token our webhook URLs carry.

fal signs each delivery with Ed25519 over
`request_id \n user_id \n timestamp \n sha256_hex(body)`, headers
`X-Fal-Webhook-{Request-Id,User-Id,Timestamp,Signature}` (hex), keys published as
a JWKS. Deliveries more than 5 minutes from now, either way, are refused.

A webhook can arrive before `submit()` has returned the request id to us, so the
URL itself names the job and attempt, with an HMAC of ours so nobody can point a
completion at another job.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.core.jwks import Fetch, JwksCache, KeysUnavailable, http_fetch
from shared.core.pagination import is_uuid
from shared.core.untrusted_json import parse
from shared.fal.completions import Completion, completion_from_webhook

TIMESTAMP_TOLERANCE_SECONDS = 300
# fal documents: cache its keys for at most 24 h.
JWKS_CACHE_SECONDS = 24 * 3600
# After a signature fails against the cached keys, fetch the set again at most this
# often (fal may have rotated its keys; a forger must not make us hammer the JWKS).
JWKS_REFRESH_INTERVAL_SECONDS = 60
# What the URL and headers may carry, checked before any use: an attempt number
# (jobs make at most a handful) and Unix seconds. int() alone takes "+1", " 1",
# Arabic-Indic digits and 4,300-digit numbers that overflow a float comparison.
_ATTEMPT = re.compile("[0-9]{1,6}")
_UNIX_SECONDS = re.compile("[0-9]{1,12}")


class WebhookRejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def job_token(secret: str, job_id: str, attempt: int) -> str:
    return hmac.new(secret.encode(), f"{job_id}:{attempt}".encode(), hashlib.sha256).hexdigest()


def webhook_url(base_url: str, secret: str, job_id: str, attempt: int) -> str:
    query = urlencode({"job": job_id, "attempt": attempt,
                       "token": job_token(secret, job_id, attempt)})
    return f"{base_url.rstrip('/')}/v1/webhooks/fal?{query}"


def check_job_token(secret: str, job_id: str, attempt: int, token: str) -> None:
    if not secret:
        raise WebhookRejected("webhooks not configured")
    # bytes: compare_digest refuses non-ASCII str, and the token is attacker-chosen.
    expected = job_token(secret, job_id, attempt).encode()
    if not hmac.compare_digest(expected, (token or "").encode("utf-8", "replace")):
        raise WebhookRejected("job token")


class VerifierUnavailable(Exception):
    """fal's keys could not be fetched: answer 503 so fal delivers again later."""


@dataclass(frozen=True)
class SignedDelivery:
    request_id: str
    user_id: str
    timestamp: str
    signature_hex: str
    body: bytes


class FalWebhookVerifier:
    def __init__(self, jwks_url: str, fetch: Fetch = http_fetch) -> None:
        self._jwks = JwksCache(jwks_url, max_age=JWKS_CACHE_SECONDS,
                               min_refetch=JWKS_REFRESH_INTERVAL_SECONDS, fetch=fetch)

    def verify(self, delivery: SignedDelivery, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if not _UNIX_SECONDS.fullmatch(delivery.timestamp):
            raise WebhookRejected("timestamp")
        timestamp = int(delivery.timestamp)
        if abs(now - timestamp) > TIMESTAMP_TOLERANCE_SECONDS:
            raise WebhookRejected("stale timestamp")
        try:
            signature = bytes.fromhex(delivery.signature_hex)
        except ValueError:
            raise WebhookRejected("signature encoding") from None
        message = "\n".join([delivery.request_id, delivery.user_id, delivery.timestamp,
                             hashlib.sha256(delivery.body).hexdigest()]).encode()
        if self._verifies(self._keys(), signature, message):
            return
        # fal may have rotated its keys: one refetch (rate-limited by the cache).
        if self._verifies(self._keys(refresh=True), signature, message):
            return
        raise WebhookRejected("signature")

    @staticmethod
    def _verifies(keys: list[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
        for key in keys:
            try:
                key.verify(signature, message)
                return True
            except InvalidSignature:
                continue
        return False

    def _keys(self, refresh: bool = False) -> list[Ed25519PublicKey]:
        # All Ed25519 keys of the set: fal may rotate, and its keys need not carry a kid.
        try:
            keys = self._jwks.keys(refresh=refresh)
        except KeysUnavailable:
            raise VerifierUnavailable("jwks unavailable") from None
        ed25519 = [k.key for k in keys if isinstance(k.key, Ed25519PublicKey)]
        if not ed25519 and not refresh:
            # A set we cannot verify anything with is not kept for a day: ask again
            # (at most once per refetch interval).
            return self._keys(refresh=True)
        if not ed25519:  # still none: fal should deliver again later
            raise VerifierUnavailable("no Ed25519 key in the JWKS")
        return ed25519


def accept_delivery(verifier: FalWebhookVerifier, secret: str, query: Mapping[str, str],
                    headers: Mapping[str, str], body: bytes) -> tuple[str, int, Completion]:
    """(job id, attempt, completion) of a webhook delivery that is ours and fal's.

    Checked twice: our HMAC job token in the URL (which job and attempt this is), and
    fal's Ed25519 signature (that fal sent it, recently). WebhookRejected if either
    fails or the body is not a JSON object; VerifierUnavailable if fal's keys cannot
    be fetched now. After both checks the body is parsed with our limits
    (shared/core/untrusted_json.py): UnsafeJson propagates."""
    job_id, attempt_text = query.get("job", ""), query.get("attempt", "")
    if not is_uuid(job_id):
        raise WebhookRejected("job")
    if not _ATTEMPT.fullmatch(attempt_text):
        raise WebhookRejected("attempt")
    attempt = int(attempt_text)
    check_job_token(secret, job_id, attempt, query.get("token", ""))
    signed_request_id = headers.get("X-Fal-Webhook-Request-Id", "")
    verifier.verify(SignedDelivery(
        request_id=signed_request_id,
        user_id=headers.get("X-Fal-Webhook-User-Id", ""),
        timestamp=headers.get("X-Fal-Webhook-Timestamp", ""),
        signature_hex=headers.get("X-Fal-Webhook-Signature", ""),
        body=body))
    parsed = parse(body)
    if not isinstance(parsed, dict):
        raise WebhookRejected("body")
    # The request id is the signed header's (fal does not promise that a body field
    # equals it).
    return job_id, attempt, completion_from_webhook(parsed, signed_request_id or None)

