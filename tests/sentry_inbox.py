"""A local Sentry for tests: an HTTP endpoint that receives the SDK's real envelopes,
from this process or from a worker process given its DSN.

The SDK is set up in the test process at most once (`sentry_in_this_process`): a
second `sentry_sdk.init` would replace the client that other tests' fixtures rely on.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SentryInbox:
    """A local Sentry: receives the SDK's real envelopes. It stays up for the rest of
    the session, so the SDK, once initialised, never sends to a dead address."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    data = gzip.decompress(data)
                elif encoding == "deflate":
                    data = zlib.decompress(data)
                elif encoding == "br":
                    import brotli

                    data = brotli.decompress(data)
                inbox.envelopes.append(data)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def dsn(self) -> str:
        return f"http://public-key@127.0.0.1:{self.server.server_port}/1"

    def text(self) -> str:
        return "\n".join(e.decode("utf-8", "replace") for e in self.envelopes)

    def events(self) -> list[dict[str, Any]]:
        """Every error event received so far (an envelope is a header line, then an
        item header line and its payload line per item)."""
        found = []
        for envelope in list(self.envelopes):
            lines = envelope.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found

    def events_tagged(self, correlation_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events()
                if (e.get("tags") or {}).get("correlation_id") == correlation_id]

    def wait_for(self, found: Callable[[], list[dict[str, Any]]], timeout: float,
                 settle: float = 1.5) -> list[dict[str, Any]]:
        """What `found` returns once it is not empty and has stayed the same for
        `settle` seconds (a second event would have arrived by then), or at `timeout`."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            now = found()
            if len(now) != len(seen):
                seen, stable_since = now, time.monotonic()
            elif seen and time.monotonic() - stable_since >= settle:
                break
            time.sleep(0.1)
        return seen


_inbox: SentryInbox | None = None


def sentry_in_this_process() -> SentryInbox:
    """One inbox per test process, with the SDK of this process (the API's, with the
    Flask integration) sending to it."""
    global _inbox
    if _inbox is None:
        from sentry_sdk.integrations.flask import FlaskIntegration

        from shared.core.observability import init_sentry

        _inbox = SentryInbox()
        init_sentry(_inbox.dsn, "test", [FlaskIntegration()])
    return _inbox
