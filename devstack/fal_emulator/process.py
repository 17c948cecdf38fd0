"""The emulator as a subprocess (`python -m devstack.fal_emulator`), and the handle on it."""

from __future__ import annotations

import json
import logging
import os
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from devstack.fal_emulator.config import client_env
from devstack.procs import ManagedProcess, ServerHandle, python_env

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
INFO_FILE = "emulator.json"  # in the state dir: the child's pid, port and CA paths, once it serves
START_TIMEOUT = 30.0


class FalEmulatorProcess(ServerHandle):
    """Handle on an emulator running as a subprocess (see start_emulator_process)."""

    process: ManagedProcess

    def __init__(self, process: ManagedProcess, state_dir: Path, info: Mapping[str, Any]) -> None:
        self.process = process
        self.state_dir = state_dir
        self.port = int(info["port"])
        self.ca_path = Path(info["ca_path"])
        self.ca_bundle_path = Path(info["ca_bundle_path"])
        self.base_url = f"https://127.0.0.1:{self.port}"
        self.queue_url_format = self.base_url + "/"
        self.jwks_url = self.base_url + "/.well-known/jwks.json"

    def _http(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca_path)), trust_env=False,
                            timeout=10.0)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        with self._http() as http:
            response = http.request(method, self.base_url + path, json=body)
        if response.status_code >= 400:
            raise ValueError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/_emulator/config", knobs))

    def stats(self, include_requests: bool = True) -> dict[str, Any]:
        return dict(self._call("GET", "/_emulator/stats" + ("" if include_requests else "?requests=0")))

    def reset(self, config: bool = False) -> None:
        self._call("POST", "/_emulator/reset", {"config": config})

    def client_env(self, key: str = "emulator-key", bundle: bool = True) -> dict[str, str]:
        return client_env("127.0.0.1", self.port, self.ca_bundle_path if bundle else self.ca_path, key)

    def __repr__(self) -> str:
        return f"<FalEmulatorProcess {self.base_url} pid={self.process.pid}>"


def start_emulator_process(state_dir: str | Path, port: int | None = None, latency: float = 1.0,
                           *, workers: int = 4, verbose: bool = False, **knobs: Any) -> FalEmulatorProcess:
    """Run the emulator as `python -m devstack.fal_emulator` and wait until it serves.

    With port=None the child binds a free port itself (no race) and reports it through
    <state_dir>/emulator.json, as it does the CA paths. Raises LaunchError (a
    RuntimeError) when the child exits first or does not serve within START_TIMEOUT.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    info_path = state_dir / INFO_FILE
    info_path.unlink(missing_ok=True)
    args = [sys.executable, "-m", "devstack.fal_emulator", "--state-dir", str(state_dir),
            "--port", str(port or 0), "--latency", str(latency), "--workers", str(workers)]
    if knobs:
        args += ["--config", json.dumps(knobs)]
    if verbose:
        args.append("--verbose")
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    process = ManagedProcess(args, state_dir / "fal-emulator.log", env=python_env(PYTHONPATH=pythonpath),
                             cwd=REPO_ROOT, name="fal-emulator")

    def ready() -> bool:
        info = json.loads(info_path.read_text())
        return bool(info.get("pid") == process.pid)

    process.start_until_ready(ready, START_TIMEOUT, interval=0.05)
    handle = FalEmulatorProcess(process, state_dir, json.loads(info_path.read_text()))
    log.info("fal emulator ready at %s (pid %s)", handle.base_url, process.pid)
    return handle
