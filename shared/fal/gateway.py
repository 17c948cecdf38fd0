"""fal.ai behind a small interface, over the real `fal-client`.

The gateway owns the retry policy: fal-client 1.0.3 retries inside every call
(`fal_client.client.MAX_ATTEMPTS = 10`, read at call time, covering 408/409/429
and transport errors), which could enqueue one submit several times and sleep for
up to ~50 s inside a worker. We set it to 1, so one gateway call is exactly one
HTTP request, and classify failures ourselves (SPEC §5).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import fal_client
import fal_client.client as fal_http
import httpx

from shared.core.config import Settings
from shared.fal.completions import model_error_type

log = logging.getLogger(__name__)

RETRIABLE_ERROR_TYPES = frozenset({
    "internal_error", "startup_timeout", "runner_unavailable", "runner_scheduling_failure",
    "runner_connection_timeout", "runner_disconnected", "runner_connection_refused",
    "runner_connection_error", "runner_incomplete_response", "runner_server_error",
})
# Model-level error types (422 "detail" entries) and the code the app sees.
MODEL_ERROR_CODES = {
    "content_policy_violation": "fal.content_policy",
    "no_media_generated": "fal.no_result",
    "image_too_large": "fal.rejected",
    "image_load_error": "fal.rejected",
    "file_download_error": "fal.input_unreachable",
}
# Model-level error types fal documents as transient (its errors page), and what the
# app sees for them: a new submission may well succeed.
TRANSIENT_MODEL_ERRORS = frozenset({"internal_server_error", "generation_timeout",
                                    "downstream_service_error",
                                    "downstream_service_unavailable"})
# Model errors a new submission can cure: fal could not fetch our link (storage was
# throttling, or the link expired while queued), and every attempt signs a fresh one.
RETRIABLE_MODEL_ERRORS = frozenset({"file_download_error"})
# fal's retry hint: `X-Fal-Needs-Retry` on the current errors page, `X-Fal-Retryable`
# on the older one; either says true.
RETRY_HEADERS = ("x-fal-needs-retry", "x-fal-retryable")


# One submit is one short HTTP request; its bound is part of the claim lease
# (FAL_IN_DOUBT_SECONDS, at least 15 s, must outlive a submit still in flight).
SUBMIT_TIMEOUT_SECONDS = 10.0
# Errors after the whole request went out: fal may have enqueued it.
_SENT_THEN_LOST = (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError)


@dataclass
class FalFailure(Exception):
    """A failed fal call, classified. `code` is what the job records.

    `in_doubt`: a submit whose request reached fal but whose answer did not (the
    connection broke or timed out while reading): fal may have accepted it.
    """

    code: str
    retriable: bool
    status: int | None = None
    error_type: str | None = None
    in_doubt: bool = False

    def __str__(self) -> str:
        return f"{self.code} (status={self.status}, type={self.error_type})"


@dataclass(frozen=True)
class FalStatus:
    completed: bool
    error: str | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class FalResult:
    image_urls: list[str] = field(default_factory=list)


class FalGateway(Protocol):
    def submit(self, arguments: dict[str, Any], webhook_url: str | None, *,
               start_timeout: float) -> str: ...
    def status(self, request_id: str) -> FalStatus: ...
    def result(self, request_id: str) -> FalResult: ...
    def cancel(self, request_id: str) -> None: ...


class FalClientGateway:
    def __init__(self, settings: Settings) -> None:
        self.model = settings.fal_model_id
        # Module globals of fal-client, read at call time (see the module docstring).
        fal_http.MAX_ATTEMPTS = 1
        # status/result/cancel use this (120 s read by default): a slow fal must not
        # hold an API worker (DELETE cancels) or outlive a task's time limit.
        fal_http.QUEUE_POLL_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
        if settings.fal_queue_host:
            fal_http.QUEUE_URL_FORMAT = f"https://{settings.fal_queue_host}/"
        self._key = settings.fal_key or None
        # fal's retention, per request (its data retention / media expiration pages):
        # the output media expire soon after we copied them, and the request's payload
        # (prompt, our signed link, the output link) is not kept in its history.
        self._retention_headers = {
            "X-Fal-Object-Lifecycle-Preference": json.dumps(
                {"expiration_duration_seconds": settings.fal_media_expiration_seconds}),
            "X-Fal-Store-IO": "0",
        }
        # One SyncClient per thread: a client shared by threads was seen to break its
        # own connections under load (Bad file descriptor, SSL record errors).
        self._local = threading.local()

    @property
    def _client(self) -> fal_client.SyncClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = fal_client.SyncClient(
                key=self._key, default_timeout=SUBMIT_TIMEOUT_SECONDS)
        return client

    def submit(self, arguments: dict[str, Any], webhook_url: str | None, *,
               start_timeout: float) -> str:
        """One submission. `start_timeout` (X-Fal-Request-Timeout): if fal has not
        started the request by then it drops it, unbilled, with a 504."""
        handle = _call(lambda: self._client.submit(self.model, arguments,
                                                   webhook_url=webhook_url,
                                                   headers=self._retention_headers,
                                                   start_timeout=start_timeout), sending=True)
        return str(handle.request_id)

    def status(self, request_id: str) -> FalStatus:
        status = _call(lambda: self._client.status(self.model, request_id))
        if isinstance(status, fal_client.Completed):
            return FalStatus(True, getattr(status, "error", None),
                             getattr(status, "error_type", None))
        return FalStatus(False)

    def result(self, request_id: str) -> FalResult:
        """The output of a COMPLETED request. fal-client's result() would wait (poll,
        without end) for one that is not: we look first, and say so if it is not done."""
        if not self.status(request_id).completed:
            raise FalFailure("fal.unavailable", retriable=True, error_type="not completed")
        try:
            output = _call(lambda: self._client.result(self.model, request_id))
        except FalFailure as failure:
            if failure.code == "fal.bad_response":  # a finished job's unreadable output
                raise FalFailure("fal.bad_result", retriable=False) from None
            raise
        return parse_output(output)

    def cancel(self, request_id: str) -> None:
        try:
            _call(lambda: self._client.cancel(self.model, request_id))
        except FalFailure as failure:
            # Already completed or unknown: nothing left to cancel.
            if failure.status not in (400, 404):
                raise


def cancel_quietly(fal: FalGateway, request_id: str) -> None:
    """Cancel a request we no longer need; a failure to do so is only logged (fal
    drops a queued request at its start timeout anyway)."""
    try:
        fal.cancel(request_id)
    except FalFailure as failure:
        log.warning("could not cancel fal request: %s", failure)


def parse_output(output: Any) -> FalResult:
    """The model output's image URLs; anything else is a malformed result."""
    try:
        urls = [str(image["url"]) for image in output["images"]]
    except (KeyError, TypeError):
        raise FalFailure("fal.bad_result", retriable=False) from None
    if not urls:
        raise FalFailure("fal.no_result", retriable=False)
    return FalResult(urls)


def _call(action: Any, *, sending: bool = False) -> Any:
    try:
        return action()
    except fal_client.client.FalClientHTTPError as exc:
        raise classify_http(exc.status_code, exc.response_headers, exc.error_type,
                            _model_error_type(exc.response)) from None
    except httpx.TransportError as exc:
        raise FalFailure("fal.unavailable", retriable=True, error_type=type(exc).__name__,
                         in_doubt=sending and isinstance(exc, _SENT_THEN_LOST)) from None
    except (ValueError, KeyError) as exc:  # a 2xx whose body is not what the protocol says
        raise FalFailure("fal.bad_response", retriable=True,
                         error_type=type(exc).__name__) from None


def classify_http(status: int, headers: dict[str, str], error_type: str | None,
                  model_error: str | None) -> FalFailure:
    lower = {k.lower(): v for k, v in headers.items()}
    if model_error in MODEL_ERROR_CODES:
        return FalFailure(MODEL_ERROR_CODES[model_error], model_error in RETRIABLE_MODEL_ERRORS,
                          status, model_error)
    if model_error in TRANSIENT_MODEL_ERRORS or any(
            lower.get(h, "").lower() == "true" for h in RETRY_HEADERS):
        return FalFailure("fal.unavailable", True, status, model_error or error_type)
    if status == 504 and (error_type == "request_timeout"
                          or lower.get(fal_http.REQUEST_TIMEOUT_TYPE_HEADER.lower())):
        # Our own X-Fal-Request-Timeout expired: fal says do not retry.
        return FalFailure("fal.timeout", False, status, error_type)
    if status == 429:
        return FalFailure("fal.rate_limited", True, status, error_type)
    if status >= 500 and (error_type in RETRIABLE_ERROR_TYPES or status in (502, 503)):
        return FalFailure("fal.unavailable", True, status, error_type)
    if status in (401, 403):
        return FalFailure("fal.unauthorized", False, status, error_type)
    if status == 422:
        return FalFailure("fal.rejected", False, status, model_error or error_type)
    if status >= 500:
        return FalFailure("fal.unavailable", False, status, error_type)
    return FalFailure("fal.rejected", False, status, error_type)


def _model_error_type(response: httpx.Response) -> str | None:
    try:
        return model_error_type(response.json())
    except (ValueError, AttributeError):
        return None


def classify_completion_error(error_type: str | None) -> FalFailure:
    """A job fal completed with an error (webhook ERROR or COMPLETED+error)."""
    if error_type in MODEL_ERROR_CODES:
        return FalFailure(MODEL_ERROR_CODES[error_type], error_type in RETRIABLE_MODEL_ERRORS,
                          error_type=error_type)
    if error_type in RETRIABLE_ERROR_TYPES or error_type in TRANSIENT_MODEL_ERRORS:
        return FalFailure("fal.unavailable", True, error_type=error_type)
    if error_type == "request_timeout":
        return FalFailure("fal.timeout", False, error_type=error_type)
    return FalFailure("fal.rejected", False, error_type=error_type)
