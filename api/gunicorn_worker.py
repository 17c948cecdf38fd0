"""The gunicorn worker the API runs in (api/gunicorn_conf.py names it).

gunicorn refuses a request line longer than `limit_request_line` (414), headers
beyond `limit_request_fields` / `limit_request_field_size` (431) and malformed HTTP
(400) before the app sees the request, with an HTML page of its own that echoes the
request line, and logs that line too (a webhook's query carries its token). Those
answers are part of every operation's contract (docs/openapi.json), so this worker
sends them in the API's error envelope and logs only their code. What is not the
client's fault (a response header the app got wrong) or not HTTP/1.1 as the API
speaks it (Expect, transfer codings, the PROXY protocol) stays gunicorn's.
"""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

from gunicorn.http.errors import (
    ChunkMissingTerminator,
    InvalidChunkExtension,
    InvalidChunkSize,
    InvalidHeader,
    InvalidHeaderName,
    InvalidHTTPVersion,
    InvalidRequestLine,
    InvalidRequestMethod,
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    InvalidSchemeHeaders,
    LimitRequestHeaders,
    LimitRequestLine,
    ObsoleteFolding,
)
from gunicorn.workers.sync import SyncWorker

from api.errors import error_object
from shared.core import metrics
from shared.core.i18n import DEFAULT_LOCALE

MALFORMED = (InvalidRequestLine, InvalidRequestMethod, InvalidHTTPVersion, InvalidHeader,
             InvalidHeaderName, ObsoleteFolding, InvalidChunkSize, ChunkMissingTerminator,
             InvalidChunkExtension, InvalidSchemeHeaders)
APP_FAULTS = (InvalidResponseHeader, InvalidResponseHeaderName)  # subclasses of MALFORMED's
# (what gunicorn raised, status, reason phrase, code)
REFUSALS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int, str, str], ...] = (
    (LimitRequestLine, 414, "URI Too Long", "request.uri_too_long"),
    (LimitRequestHeaders, 431, "Request Header Fields Too Large", "request.headers_too_large"),
    (MALFORMED, 400, "Bad Request", "request.invalid"),
)


def refusal_for(exc: Exception) -> tuple[int, str, str] | None:
    """(status, reason, code) of a parse failure this worker answers, else None."""
    if isinstance(exc, APP_FAULTS):
        return None
    return next(((status, reason, code) for kind, status, reason, code in REFUSALS
                 if isinstance(exc, kind)), None)


def refusal_response(status: int, reason: str, code: str) -> bytes:
    """A whole HTTP/1.1 answer in the error envelope. No header was read, so there is
    no locale or request id to honour: English, and a fresh correlation id."""
    correlation_id = uuid.uuid4().hex
    body = json.dumps({"error": {**error_object(code, DEFAULT_LOCALE),
                                 "correlationId": correlation_id}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Request-ID: {correlation_id}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


class ApiWorker(SyncWorker):
    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: Exception) -> None:
        refusal = refusal_for(exc)
        if refusal is None:
            super().handle_error(req, client, addr, exc)
            return
        status, reason, code = refusal
        # The kind only: the request line may carry a webhook's token in its query.
        self.log.warning("request refused before the app: %s %s (%s)", status, code,
                         type(exc).__name__)
        metrics.API_ERRORS.labels(code=code).inc()
        try:
            client.sendall(refusal_response(status, reason, code))
        except OSError:
            self.log.debug("the client left before its refusal was sent")
