"""The gunicorn worker the API runs in (api/gunicorn_conf.py names it).

gunicorn refuses a request line longer than `limit_request_line` (414) and headers
beyond `limit_request_fields` / `limit_request_field_size` (431) before the app sees
the request, with an HTML page of its own. Those answers are part of every
operation's contract (docs/openapi.json), so this worker sends them in the API's
error envelope; every other parse failure is gunicorn's as before.
"""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.sync import SyncWorker

from api.errors import error_object
from shared.core import metrics
from shared.core.errors import ERROR_KINDS
from shared.core.i18n import DEFAULT_LOCALE

REFUSALS: tuple[tuple[type[Exception], str, str], ...] = (
    (LimitRequestLine, "request.uri_too_long", "URI Too Long"),
    (LimitRequestHeaders, "request.headers_too_large", "Request Header Fields Too Large"),
)


def refusal_response(code: str, reason: str) -> bytes:
    """A whole HTTP/1.1 answer in the error envelope. No header was read, so there is
    no locale or request id to honour: English, and a fresh correlation id."""
    correlation_id = uuid.uuid4().hex
    body = json.dumps({"error": {**error_object(code, DEFAULT_LOCALE),
                                 "correlationId": correlation_id}}).encode()
    head = (f"HTTP/1.1 {ERROR_KINDS[code].status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Request-ID: {correlation_id}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


class ApiWorker(SyncWorker):
    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: Exception) -> None:
        refusal = next(((code, reason) for kind, code, reason in REFUSALS
                        if isinstance(exc, kind)), None)
        if refusal is None:
            super().handle_error(req, client, addr, exc)
            return
        code, reason = refusal
        # The code only: the request line may carry a webhook's token in its query.
        self.log.warning("request refused before the app: %s", code)
        metrics.API_ERRORS.labels(code=code).inc()
        try:
            client.sendall(refusal_response(code, reason))
        except OSError:
            self.log.debug("the client left before its refusal was sent")
