"""Fixtures of the integration tests: one fal emulator for the session (the real
fal-client talks to it; one CA, so clients that cache their trust store stay
valid), settings pointing at it, and the app on a real port for webhooks."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server

from devstack.fal_emulator import FalEmulator
from devstack.procs import free_port
from tests.conftest import make_settings


@pytest.fixture(scope="session")
def emulator() -> Iterator[FalEmulator]:
    emu = FalEmulator(latency_seconds=0.2).start()
    saved = os.environ.get("SSL_CERT_FILE")
    # httpx (fal-client, result downloads) and urllib (JWKS) trust the emulator's CA.
    os.environ["SSL_CERT_FILE"] = str(emu.ca_bundle_path)
    try:
        yield emu
    finally:
        if saved is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = saved
        emu.stop()


@pytest.fixture
def settings(pg_url, s3_endpoint, buckets, emulator):  # overrides tests/conftest.py's
    emulator.reset(config=True)
    return make_settings(
        database_url=pg_url, s3_endpoint_url=s3_endpoint, uploads_bucket=buckets[0],
        processed_bucket=buckets[1], fal_key="test-key",
        fal_queue_host=f"127.0.0.1:{emulator.port}", fal_webhook_jwks_url=emulator.jwks_url,
        fal_media_hosts=f"127.0.0.1:{emulator.port}", fal_poll_seconds=0.1,
        fal_retry_base_seconds=0.05, fal_deadline_seconds=20, upload_wait_seconds=5)


class _QuietHandler(WSGIRequestHandler):
    """The test server's access log would print request lines with their query
    (production's gunicorn logs paths only: api/gunicorn_conf.py)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def live_api(app, svc) -> Iterator[str]:
    """The app on a real port, so the emulator can deliver webhooks to it."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    svc.settings = replace(svc.settings, public_base_url=base)
    try:
        yield base
    finally:
        server.shutdown()
