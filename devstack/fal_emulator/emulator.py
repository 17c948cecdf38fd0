"""FalEmulator: the emulator serving from background threads of the current process."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from devstack.fal_emulator.config import EmulatorConfig, client_env
from devstack.fal_emulator.core import EmulatorCore
from devstack.fal_emulator.server import EmulatorServer
from devstack.fal_emulator.tls import prepare_tls
from devstack.fal_emulator.webhooks import load_signing_key
from devstack.procs import StopsOnExit

log = logging.getLogger(__name__)


class FalEmulator(StopsOnExit):
    """The emulator running in background threads of the current process.

    >>> with FalEmulator(latency_seconds=0.5) as emu:
    ...     fal_client.client.QUEUE_URL_FORMAT = emu.queue_url_format  # + SSL_CERT_FILE=emu.ca_path
    """

    def __init__(self, state_dir: str | Path | None = None, port: int = 0, *, host: str = "127.0.0.1",
                 workers: int = 4, verbose: bool = False, **knobs: Any) -> None:
        self._own_dir = state_dir is None
        if state_dir is None:
            state_dir = tempfile.mkdtemp(prefix="fal-emulator-")
        self.state_dir = Path(state_dir)
        self.host = host
        self._requested_port = port
        self.workers = workers
        self.verbose = verbose
        self.config = EmulatorConfig()
        self.config.update(knobs)
        self._core: EmulatorCore | None = None
        self._stopped = threading.Event()
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self.ca_path = self.state_dir / "ca.pem"
        self.ca_bundle_path = self.state_dir / "ca-bundle.pem"

    # -- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FalEmulator already started")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        server_ctx, client_ctx, self.ca_path, self.ca_bundle_path = prepare_tls(self.state_dir)
        signing_key = load_signing_key(self.state_dir)
        core = EmulatorCore(self.config, self.state_dir, signing_key, client_ctx, self.workers)
        server = EmulatorServer((self.host, self._requested_port), core, server_ctx, self.verbose)
        core.base_url = f"https://{self.host}:{server.server_address[1]}"
        self._core, self._server = core, server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fal-emulator-http", daemon=True)
        self._stopped.clear()
        self._thread.start()
        log.info("fal emulator listening on %s (CA %s)", self.base_url, self.ca_path)
        return self

    def stop(self) -> None:
        server, core = self._server, self._core
        if server is None or core is None:
            return
        server.shutdown()
        server.server_close()
        core.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._core = self._thread = None
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self._stopped.set()

    def serve_forever(self) -> None:
        """Block until stop() has finished (called from another thread or a signal handler)."""
        while not self._stopped.wait(timeout=0.5):
            pass

    def __enter__(self) -> Self:
        return self if self._server is not None else self.start()

    # -- addresses

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FalEmulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def queue_url_format(self) -> str:
        """The value for `fal_client.client.QUEUE_URL_FORMAT` (ends with a slash)."""
        return self.base_url + "/"

    @property
    def jwks_url(self) -> str:
        return self.base_url + "/.well-known/jwks.json"

    def client_env(self, key: str = "emulator-key", bundle: bool = True) -> dict[str, str]:
        """Environment for a process whose (unmodified, not yet imported) fal_client should use us."""
        return client_env(self.host, self.port, self.ca_bundle_path if bundle else self.ca_path, key)

    # -- keys

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._require_core().signing_key.public_key()

    def jwks(self) -> dict[str, Any]:
        """The document served at jwks_url."""
        return self._require_core().jwks()

    # -- knobs and counters

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at runtime; returns the full configuration. ValueError on bad input."""
        return self._require_core().configure(knobs)

    def stats(self, include_requests: bool = True) -> dict[str, Any]:
        return self._require_core().stats(include_requests)

    def reset(self, config: bool = False) -> None:
        """Clear counters and per-request stats (jobs in flight still finish); config=True
        also restores the knobs given at start."""
        self._require_core().reset(restore_config=config)

    def _require_core(self) -> EmulatorCore:
        if self._core is None:
            raise RuntimeError("FalEmulator not started")
        return self._core

    def __repr__(self) -> str:
        where = self.base_url if self._server is not None else "stopped"
        return f"<FalEmulator {where}>"
