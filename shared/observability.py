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
    r"((?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=)"
    r"[^&\s\"'<>]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
REDACTED = "[redacted]"
_CORRELATION_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def redact(text: str) -> str:
    text = _SIGNED_QUERY.sub("?" + REDACTED, text)
    text = _SECRET_PARAM.sub(r"\1" + REDACTED, text)
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
    if candidate and _CORRELATION_ID_OK.match(candidate):
        return candidate
    return uuid.uuid4().hex


# --- logging ---------------------------------------------------------------

class ContextFilter(logging.Filter):
    """Adds the correlation id and redacts the final message and its arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = current_correlation_id()
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not lose the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            # Formatters re-render exc_info from the live exception; keep only the
            # redacted text.
            record.exc_info = None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str | dict | list | tuple):
                setattr(record, name, redact_any(value))
        return True


_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "correlation_id"}


def json_handler(stream: Any = None) -> logging.Handler:
    """A handler writing redacted JSON lines with the correlation id."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(
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
    # botocore at DEBUG logs full request URLs; keep it quiet in any case.
    logging.getLogger("botocore").setLevel(max(logging.INFO, root.level))
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add the redacting filter to every handler of a logger (used when a
    framework such as Celery installs its own handlers)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


# --- Sentry ----------------------------------------------------------------

def scrub_sentry_event(event: dict[str, Any], _hint: Any) -> dict[str, Any]:
    return redact_any(event)


def init_sentry(dsn: str, environment: str, integrations: list[Any]) -> None:
    if not dsn:
        return
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        integrations=integrations,
        send_default_pii=False,
        before_send=scrub_sentry_event,  # type: ignore[arg-type]
        before_breadcrumb=lambda crumb, _hint: redact_any(crumb),
        traces_sample_rate=0.0,
    )
