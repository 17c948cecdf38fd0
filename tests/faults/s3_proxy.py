"""A small fault-injecting HTTP proxy in front of LocalStack's S3.

Every request is forwarded unchanged, Host header included (SigV4 signs the
host, and presigned URLs are signed for the proxy's address, so LocalStack still
checks them). Three faults, switched on from the test:

- `slow_down(seconds)`: every request answers 503 SlowDown, as S3 does when it
  throttles, for that long;
- `refuse_writes(path_fragment, on)`: PUTs whose path contains the fragment answer
  503 SlowDown until switched off (a write brownout that lets reads through);
- `delay(path_fragment, seconds, method="GET")`: requests of that method whose path
  contains the fragment are held that long first (a window in which the suite
  kills the worker doing them);
- `before(path_fragment, method, action)`: `action()` runs once, before the first
  such request is forwarded (the database cut while a worker waits on S3).

`counts` totals what it did; `by_path` counts the same per (what, method, path).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
# Not forwarded either way: our side of each connection sets its own.
REQUEST_ONLY = HOP_BY_HOP | {"expect"}
RESPONSE_ONLY = HOP_BY_HOP | {"server", "date"}


class FaultyS3Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.slow_down_until = 0.0
        self.delays: dict[tuple[str, str], float] = {}  # (method, path fragment) -> seconds
        self.refused_writes: set[str] = set()
        self.actions: dict[tuple[str, str], Callable[[], object]] = {}
        self.counts = {"forwarded": 0, "slowed_down": 0, "delayed": 0, "refused_writes": 0}
        self.by_path: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="s3-fault-proxy")

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def slow_down(self, seconds: float) -> None:
        self.slow_down_until = time.monotonic() + seconds

    def delay(self, path_fragment: str, seconds: float, method: str = "GET") -> None:
        with self._lock:
            if seconds:
                self.delays[(method, path_fragment)] = seconds
            else:
                self.delays.pop((method, path_fragment), None)

    def refuse_writes(self, path_fragment: str, on: bool = True) -> None:
        with self._lock:
            if on:
                self.refused_writes.add(path_fragment)
            else:
                self.refused_writes.discard(path_fragment)

    def before(self, path_fragment: str, method: str, action: Callable[[], object]) -> None:
        with self._lock:
            self.actions[(method, path_fragment)] = action

    def _take_action(self, method: str, path: str) -> Callable[[], object] | None:
        with self._lock:
            for verb, fragment in list(self.actions):
                if verb == method and fragment in path:
                    return self.actions.pop((verb, fragment))
        return None

    def count(self, key: str, method: str = "", path: str = "") -> None:
        with self._lock:
            self.counts[key] += 1
            self.by_path[(key, method, path.split("?", 1)[0])] += 1

    def seen(self, key: str, method: str, path_fragment: str) -> int:
        """How many requests of that method, with the fragment in their path, were
        forwarded, delayed or refused so far (`key`)."""
        with self._lock:
            return sum(n for (what, verb, path), n in self.by_path.items()
                       if what == key and verb == method and path_fragment in path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultyS3Proxy
    upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # request lines carry presigned query strings

    def _forward(self) -> None:
        body = self._read_body()
        proxy = self.owner
        method, path = self.command, self.path
        if time.monotonic() < proxy.slow_down_until:
            proxy.count("slowed_down", method, path)
            return self._answer(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
        if method == "PUT" and any(f in path for f in list(proxy.refused_writes)):
            proxy.count("refused_writes", method, path)
            return self._answer(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
        for (verb, fragment), seconds in list(proxy.delays.items()):
            if verb == method and fragment in path:
                proxy.count("delayed", method, path)
                time.sleep(seconds)
        action = proxy._take_action(method, path)
        if action is not None:
            action()
        proxy.count("forwarded", method, path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in REQUEST_ONLY}
        for attempt in range(2):  # a kept-alive upstream connection may have closed
            try:
                conn = self._upstream()
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self._drop_upstream()
                if attempt:
                    return self._answer(502, {}, b"")
        out = {k: v for k, v in response.getheaders() if k.lower() not in RESPONSE_ONLY}
        return self._answer(response.status, out, data, keep_length=self.command == "HEAD")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815 - stdlib naming

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _upstream(self) -> http.client.HTTPConnection:
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection("127.0.0.1", self.owner.upstream_port,
                                                       timeout=30)
        return self.upstream

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    def _answer(self, status: int, headers: dict[str, str], data: bytes, *,
                keep_length: bool = False) -> None:
        try:
            self._write(status, headers, data, keep_length)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (a killed worker, say)

    def _write(self, status: int, headers: dict[str, str], data: bytes,
               keep_length: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() == "content-length" and not keep_length:
                continue
            self.send_header(key, value)
        if not keep_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def finish(self) -> None:
        super().finish()
        self._drop_upstream()
