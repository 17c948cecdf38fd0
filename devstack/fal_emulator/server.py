"""fal's queue protocol over HTTPS: the routes, the submit faults and the media host.

`POST /{app}[?fal_webhook=URL]`, `GET /{owner}/{alias}/requests/{id}/status`,
`GET /{owner}/{alias}/requests/{id}`, `PUT /{owner}/{alias}/requests/{id}/cancel`
(`Authorization: Key <non-empty>`), `GET /media/{file}`, `GET /.well-known/jwks.json` and
the `/_emulator/` control endpoints; see the package docstring.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import ssl
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devstack.fal_emulator.core import EmulatorCore
from devstack.fal_emulator.jobs import IN_PROGRESS, IN_QUEUE, Job, compact_json, split_app
from devstack.fal_emulator.media import media_file
from devstack.fal_emulator.model import CONTENT_POLICY_MSG

log = logging.getLogger(__name__)

_REQUEST_PATH = re.compile(r"^/(?P<base>.+?)/requests/(?P<id>[^/]+)(?P<tail>/status|/cancel)?/?$")
_NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class EmulatorServer(ThreadingHTTPServer):
    """A thread per connection; TLS is negotiated in that thread, not in the accept loop."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 2048

    def __init__(self, address: tuple[str, int], core: EmulatorCore, tls: ssl.SSLContext,
                 verbose: bool) -> None:
        self.core = core
        self.tls = tls
        self.verbose = verbose
        super().__init__(address, QueueHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, so a slow or
        # failing client cannot hold up accept() for everyone else.
        request.settimeout(30)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            if self.verbose:
                log.info("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            QueueHandler(conn, client_address, self)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            if self.verbose:
                log.info("connection from %s ended: %r", client_address, exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error serving %s", client_address)


class QueueHandler(BaseHTTPRequestHandler):
    """One connection's requests, routed to the queue API, the media host or the controls."""

    protocol_version = "HTTP/1.1"
    server_version = "fal-emulator/1.0"
    timeout = 30  # idle keep-alive connections give their thread back after this
    server: EmulatorServer

    # -- plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            log.info("%s %s", self.address_string(), format % args)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any = b"", headers: Mapping[str, str] | None = None, *,
              fal_request_id: bool = True, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else compact_json(body)
        self.send_response(status)
        merged = {"Content-Type": content_type, **(headers or {})}
        for key, value in merged.items():
            self.send_header(key, value)
        if fal_request_id:
            self.send_header("x-fal-request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _authorized(self) -> bool:
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "key" and token.strip():
            return True
        self.server.core.count("auth_failures")
        self._send(401, {"detail": "Missing or invalid Authorization header (expected 'Key <FAL_KEY>')."})
        return False

    def _route(self) -> None:
        try:
            self._dispatch()
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            self.close_connection = True
            if self.server.verbose:
                log.info("%s %s from %s failed: %r", self.command, self.path, self.client_address, exc)
        except Exception:  # noqa: BLE001 - keep serving; the client sees a 500
            log.exception("handler failed for %s %s", self.command, self.path)
            with contextlib.suppress(OSError):
                self._send(500, {"detail": "emulator bug, see its log", "error_type": "internal_error"})

    do_GET = do_POST = do_PUT = do_HEAD = _route  # noqa: N815 - stdlib naming

    # -- routes

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        core = self.server.core
        method = self.command
        body = self._body() if method in ("POST", "PUT") else b""

        if path == "/.well-known/jwks.json" and method in ("GET", "HEAD"):
            return self._send(200, core.jwks())
        if path.startswith("/media/") and method in ("GET", "HEAD"):
            return self._media(path[len("/media/"):])
        if path.startswith("/_emulator/"):
            return self._control(path[len("/_emulator/"):], method, body, query)

        match = _REQUEST_PATH.match(path)
        if match:
            if not self._authorized():
                return None
            return self._request_op(match["base"], match["id"], match["tail"] or "", method, query)
        if method == "POST":
            if not self._authorized():
                core.count("submits")
                return None
            return self._submit(path, body, query)
        return self._send(404, {"detail": f"Not found: {method} {path}"})

    def _media(self, name: str) -> None:
        core = self.server.core
        found = media_file(core.media_dir, name)
        if found is None:
            return self._send(404, {"detail": "File not found"})
        file, ctype = found
        core.count("media_downloads")
        if core.config.media_delay_seconds:
            time.sleep(core.config.media_delay_seconds)
        return self._send(200, file.read_bytes(), {"Cache-Control": "public, max-age=3600"},
                          fal_request_id=False, content_type=ctype)

    def _control(self, op: str, method: str, body: bytes, query: dict[str, list[str]]) -> None:
        core = self.server.core
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return self._send(400, {"detail": "body must be JSON"})
        if op == "health":
            return self._send(200, {"ok": True})
        if op == "stats" and method == "GET":
            include = query.get("requests", ["1"])[0] not in ("0", "false", "no")
            return self._send(200, core.stats(include_requests=include))
        if op == "config" and method == "GET":
            return self._send(200, core.config.as_dict())
        if op == "config" and method == "POST":
            if not isinstance(payload, dict):
                return self._send(400, {"detail": "body must be a JSON object of knobs"})
            try:
                return self._send(200, core.configure(payload))
            except (ValueError, TypeError) as exc:
                return self._send(400, {"detail": str(exc)})
        if op == "reset" and method == "POST":
            core.reset(restore_config=bool(isinstance(payload, dict) and payload.get("config")))
            return self._send(200, {"ok": True})
        return self._send(404, {"detail": f"no control endpoint {method} /_emulator/{op}"})

    def _submit(self, path: str, body: bytes, query: dict[str, list[str]]) -> None:
        core = self.server.core
        fault = core.take_submit_fault()
        if fault and fault != "drop_after_enqueue":
            return self._submit_fault(fault, path)
        split = split_app(path)
        if split is None:
            return self._send(404, {"detail": f"Application {path.strip('/')!r} not found"})
        app, base = split
        try:
            arguments = json.loads(body) if body else {}
        except ValueError:
            return self._send(422, {"detail": [{"loc": ["body"], "msg": "Invalid JSON body",
                                                "type": "json_invalid"}]})
        webhook_url = query.get("fal_webhook", [None])[0]
        if webhook_url and urlsplit(webhook_url).scheme not in ("http", "https"):
            return self._send(400, {"detail": "fal_webhook must be an http(s) URL",
                                    "error_type": "bad_request"})
        headers = {k.lower(): v for k, v in self.headers.items()}
        job, position = core.enqueue(app, base, arguments, webhook_url, headers)
        if job.webhook_mode == "early":
            core.run_early(job)
        delay = core.config.submit_delay_seconds
        if delay:
            time.sleep(delay)
        if fault == "drop_after_enqueue":
            return self._drop()
        urls = self._urls(job)
        return self._send(200, {"status": IN_QUEUE, "request_id": job.request_id,
                                "gateway_request_id": job.request_id, "queue_position": position, **urls})

    def _urls(self, job: Job) -> dict[str, str]:
        base = f"{self.server.core.base_url}/{job.base}/requests/{job.request_id}"
        return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}

    def _submit_fault(self, fault: str, path: str) -> None:
        app = path.strip("/")
        infra: dict[str, tuple[int, str, str, dict[str, str]]] = {
            "429": (429, "Too many requests. Please slow down.", "rate_limited", {"Retry-After": "1"}),
            "500_internal": (500, "Internal server error", "internal_error", {}),
            "503_runner": (503, "No runner could be allocated to handle the request.",
                           "runner_scheduling_failure", {}),
            "504_startup": (504, "The runner did not start within the allowed time.", "startup_timeout", {}),
            "504_request_timeout": (504, "Request timed out", "request_timeout",
                                    {"X-Fal-Request-Timeout-Type": "user"}),
            "retryable_header": (503, "The runner disconnected unexpectedly.", "runner_disconnected",
                                 {"X-Fal-Retryable": "true"}),
        }
        if fault in infra:
            status, detail, err_type, extra = infra[fault]
            return self._send(status, {"detail": detail, "error_type": err_type},
                              {"X-Fal-Error-Type": err_type, **extra})
        if fault == "400":
            return self._send(400, {"detail": "Bad request", "error_type": "bad_request"},
                              {"X-Fal-Error-Type": "bad_request"})
        if fault == "401":
            return self._send(401, {"detail": "Invalid API key"})
        if fault == "403":
            return self._send(403, {"detail": "User is locked. Reason: Exhausted balance. "
                                              "Top up your balance at fal.ai/dashboard/billing."})
        if fault == "404":
            return self._send(404, {"detail": f"Application {app!r} not found"})
        if fault == "422_content_policy":
            return self._send(422, {"detail": [{
                "loc": ["body", "prompt"], "type": "content_policy_violation",
                "msg": CONTENT_POLICY_MSG, "url": "https://docs.fal.ai/errors#content_policy_violation"}]},
                {"X-Fal-Retryable": "false"})
        if fault == "malformed":
            return self._send(200, b"<html><body>OK</body></html>", content_type="text/html")
        if fault == "502_nginx":
            return self._send(502, _NGINX_502, {"Server": "nginx"}, fal_request_id=False,
                              content_type="text/html")
        if fault == "drop":
            return self._drop()
        raise AssertionError(f"unhandled fault {fault}")

    def _request_op(self, base: str, request_id: str, tail: str, method: str,
                    query: dict[str, list[str]]) -> None:
        core = self.server.core
        counter = {"/status": "status_calls", "/cancel": "cancels", "": "result_calls"}[tail]
        with core.lock:
            job = core.jobs.get(request_id)
            if counter != "cancels":
                core.counters[counter] += 1
        if job is None or job.base != base:
            if job is not None:
                detail = (f"Request {request_id} belongs to {job.base!r}, not {base!r}: queue URLs take "
                          "owner/alias only, without the endpoint path")
            else:
                detail = f"Request {request_id} not found"
            if tail == "/cancel":
                core.count("cancels")
                return self._send(404, {"status": "NOT_FOUND", "detail": detail})
            return self._send(404, {"detail": detail})
        if tail == "/cancel":
            if method != "PUT":
                return self._send(405, {"detail": "use PUT"})
            status, payload = core.cancel(job)
            return self._send(status, payload)
        if method not in ("GET", "HEAD"):
            return self._send(405, {"detail": "use GET"})
        if tail == "/status":
            return self._status(job, query)
        return self._result(job)

    def _status(self, job: Job, query: dict[str, list[str]]) -> None:
        core = self.server.core
        with_logs = query.get("logs", ["0"])[0].lower() in ("1", "true")
        with core.lock:
            job.status_calls += 1
            urls = self._urls(job)
            logs = list(job.logs) if with_logs else None
            body: dict[str, Any] = {"status": job.state, "request_id": job.request_id,
                                    "response_url": urls["response_url"], "status_url": urls["status_url"],
                                    "cancel_url": urls["cancel_url"], "logs": logs}
            if job.state == IN_QUEUE:
                body["queue_position"] = core.queue_position(job)
                return self._send(202, body)
            if job.state == IN_PROGRESS:
                return self._send(202, body)
            outcome = job.outcome
            assert outcome is not None
            started = job.started_at or job.completed_at or 0.0
            body["metrics"] = {"inference_time": round((job.completed_at or started) - started, 3)}
            if outcome.error is not None:
                body["error"] = outcome.error
                body["error_type"] = outcome.error_type
        return self._send(200, body)

    def _result(self, job: Job) -> None:
        core = self.server.core
        with core.lock:
            job.result_calls += 1
            outcome = job.outcome
            state = job.state
        if outcome is None:
            return self._send(400, {"detail": f"Request is still {state}"})
        if core.result_expired(job):
            return self._send(404, {"detail": f"Request {job.request_id} not found"})
        headers = dict(outcome.headers)
        ctype = headers.pop("Content-Type", "application/json")
        return self._send(outcome.status_code, outcome.body, headers, content_type=ctype)
