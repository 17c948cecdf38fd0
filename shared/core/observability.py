"""Structured logs with correlation ids, signed-URL redaction, Sentry scrubbing.

Signed URLs are bearer credentials for a private object. Code never logs them on
purpose, and the redaction here is the net under that rule: every log record and
every Sentry event passes through `redact`, which removes SigV4 query strings and
credential-looking parameters whatever the message looks like.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import uuid
from typing import Any

import sentry_sdk
from pythonjsonlogger.json import JsonFormatter

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)

# Whole query strings of presigned URLs (SigV4 and SigV2), and any single
# signature/credential/token parameter that escaped them.
_SIGNED_QUERY = re.compile(
    r"\?[^\s\"'<>]*(?:X-Amz-|AWSAccessKeyId=|Signature=)[^\s\"'<>]*", re.IGNORECASE
)
_SECRET_PARAM = re.compile(
    r"((?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId"
    r"|token|fal_webhook)(?:=|%3D))"
    r"[^&\s\"'<>]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# fal's API key in an Authorization header ("Key <id>:<secret>").
_FAL_KEY = re.compile(r"(Authorization[\"']?\s*[:=]\s*[\"']?Key\s+)[^\s\"',}]+", re.IGNORECASE)
# A bare JWT (no "Bearer " in front of it: a token in a message or a variable).
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
# fal's media links are public, unsigned URLs of a user's face: the path is the secret.
_FAL_MEDIA = re.compile(r"(https?://(?:[A-Za-z0-9-]+\.)*fal\.media)/[^\s\"'<>]*", re.IGNORECASE)
REDACTED = "[redacted]"
_CORRELATION_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # matched whole


def redact(text: str) -> str:
    text = _SIGNED_QUERY.sub("?" + REDACTED, text)
    text = _SECRET_PARAM.sub(r"\1" + REDACTED, text)
    text = _FAL_KEY.sub(r"\1" + REDACTED, text)
    text = _FAL_MEDIA.sub(r"\1/" + REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    return _BEARER.sub(r"\1" + REDACTED, text)


def redact_any(value: Any) -> Any:
    """Redact strings anywhere inside dicts/lists/tuples (Sentry events, log extras)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_any(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_any(v) for v in value)
    return value


# --- correlation ids -------------------------------------------------------

def current_correlation_id() -> str | None:
    return _correlation_id.get()


def set_correlation_id(value: str | None) -> contextvars.Token[str | None]:
    return _correlation_id.set(value)


def reset_correlation_id(token: contextvars.Token[str | None]) -> None:
    _correlation_id.reset(token)


def accept_or_make_correlation_id(candidate: str | None) -> str:
    """Take a client's X-Request-ID only if it is a harmless token; else mint one."""
    if candidate and _CORRELATION_ID_OK.fullmatch(candidate):
        return candidate
    return uuid.uuid4().hex


# --- logging ---------------------------------------------------------------

class ContextFilter(logging.Filter):
    """Adds the correlation id. It does not change the record: redaction happens
    when a line is formatted, so every handler sees what the code really logged
    (tests read the raw records to prove no code logs a signed URL at all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = current_correlation_id()
        return True


class RedactingJsonFormatter(JsonFormatter):
    """JSON lines with every signed URL, credential and bearer token redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class RedactingFilter(logging.Filter):
    """For handlers we do not format ourselves: redacts the record in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = redact(record.getMessage())
        except Exception:  # noqa: BLE001 - a broken format string must not lose the record
            record.msg = redact(str(record.msg))
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


# Loggers that print full request URLs at INFO (httpx: "HTTP Request: GET <url>",
# botocore at DEBUG): they only speak up on warnings.
NOISY_LOGGERS = ("botocore", "urllib3", "httpx", "httpcore", "s3transfer")


def quiet_noisy_loggers() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def json_handler(stream: Any = None) -> logging.Handler:
    """A handler writing redacted JSON lines with the correlation id."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingJsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s",
        rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
    ))
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """JSON lines on stderr for every process (API, worker, beat)."""
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(json_handler(stream))
    root.setLevel(level)
    quiet_noisy_loggers()


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add the redacting filter to every handler of a logger (used when a
    framework such as Celery installs its own handlers)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not isinstance(handler.formatter, RedactingJsonFormatter) and not any(
                isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


# --- Sentry ----------------------------------------------------------------

CORRELATION_TAG = "correlation_id"
# Request headers that carry credentials: the SDK filters them when it does not send
# PII (our setting); removed here too, so no SDK upgrade or option can bring them back.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key",
                             "x-fal-webhook-signature"})


def scrub_sentry_event(event: dict[str, Any], _hint: Any) -> dict[str, Any]:
    """Sentry's before_send: the correlation id as a tag; no request body, cookie,
    credential header or command line; every string redacted like a log line."""
    # Set for a request's whole handling (api/context.py) and a task's whole run,
    # Celery's capture of its failure included (worker/base.py).
    correlation_id = current_correlation_id()
    if correlation_id:
        event.setdefault("tags", {}).setdefault(CORRELATION_TAG, correlation_id)
    extra = event.get("extra")
    if isinstance(extra, dict):
        extra.pop("sys.argv", None)  # a command line may carry a broker URL's password
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)  # a body is never sent (max_request_body_size too)
        request.pop("cookies", None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {name: value for name, value in headers.items()
                                  if str(name).lower() not in _SECRET_HEADERS}
    return redact_any(event)


def init_sentry(dsn: str, environment: str, integrations: list[Any]) -> None:
    if not dsn:
        return
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        integrations=integrations,
        send_default_pii=False,
        # Frames' local variables can hold anything (tokens, keys in a client's repr,
        # image bytes): they are not sent at all.
        include_local_variables=False,
        max_request_body_size="never",  # request bodies are not sent either
        before_send=scrub_sentry_event,  # type: ignore[arg-type]
        before_breadcrumb=lambda crumb, _hint: redact_any(crumb),
        traces_sample_rate=0.0,
    )
