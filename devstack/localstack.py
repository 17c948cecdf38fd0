"""A local S3 endpoint that, unlike moto, verifies presigned-URL signatures and expiry.

LocalStack runs in host mode (no Docker) from a virtual environment of its own: it is a
server the development stack starts, not a library of the application, and its pins
conflict with nothing only as long as it stays out of the main environment.
The team note "s3-endpoint-that-checks-signatures.md" records the measurements behind
every pin and environment variable below.

Usage: ``python -m devstack.localstack [--port N] [--data-dir DIR] [--prefer moto]``
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal, Self

from devstack.procs import (
    LaunchError,
    ManagedProcess,
    ServerHandle,
    free_port,
    on_stop_signals,
    python_env,
    tail,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVSTACK_DIR = REPO_ROOT / ".devstack"
DEFAULT_VENV_DIR = DEVSTACK_DIR / "localstack-venv"
DEFAULT_DATA_DIR = DEVSTACK_DIR / "localstack-data"
DEFAULT_MOTO_DATA_DIR = DEVSTACK_DIR / "moto-data"

# LocalStack checks every presigned URL against the secret "test", whatever the access
# key; clients of this endpoint must therefore use exactly these credentials.
ACCESS_KEY_ID = "test"
SECRET_ACCESS_KEY = "test"  # noqa: S105 - LocalStack's fixed development secret
REGION = "us-east-1"

# 4.13.1 is the newest release that runs on Python 3.11; the other pins repair its
# dependency metadata (see the note for the failure each one prevents).
LOCALSTACK_PINS: tuple[str, ...] = (
    "localstack-core[base-runtime]==4.13.1",
    "cbor2<6",
    "pyopenssl==25.3.0",
    "cryptography>=45.0.7,<47",
    "service-identity",
)
MARKER_NAME = ".devstack-pins"

START_TIMEOUT = 60.0
INSTALL_TIMEOUT = 900.0

# Only these variables of the caller reach LocalStack: it reads hundreds of settings
# from the environment (DEBUG, PERSISTENCE, LOCALSTACK_*, ...), and one inherited by
# accident could silently switch signature checks off.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME")


class S3LaunchError(LaunchError):
    """LocalStack (or moto) could not be installed or did not become ready."""


# --------------------------------------------------------------------------- install


def _marker_text() -> str:
    # The interpreter version is part of the marker: a venv made by another Python
    # must be rebuilt, not patched.
    header = f"python {sys.version_info.major}.{sys.version_info.minor}"
    return "\n".join((header, *LOCALSTACK_PINS)) + "\n"


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def is_installed(venv_dir: Path = DEFAULT_VENV_DIR) -> bool:
    """True when venv_dir holds exactly the pinned LocalStack installation."""
    marker = venv_dir / MARKER_NAME
    try:
        return _venv_python(venv_dir).exists() and marker.read_text() == _marker_text()
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _install_lock(venv_dir: Path) -> Iterator[None]:
    # Parallel test sessions (or `hairfluencer dev` next to pytest) may install at the
    # same time; two pips writing one venv corrupt it.
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir.parent / f"{venv_dir.name}.lock"
    with lock_path.open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _run_logged(args: list[str], log_path: Path) -> None:
    with log_path.open("ab") as log_file:
        result = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    if result.returncode != 0:
        raise S3LaunchError(
            f"{' '.join(args[:4])} ... failed with exit code {result.returncode}; "
            f"last lines of {log_path}:\n{tail(log_path)}"
        )


def install_log_path(venv_dir: Path) -> Path:
    # Beside the venv, not inside: `venv --clear` would delete it mid-install.
    return venv_dir.with_name(f"{venv_dir.name}.install.log")


def _refuse_foreign_directory(venv_dir: Path) -> None:
    # `venv --clear` empties the directory, so it must be empty or a venv already.
    if venv_dir.is_dir() and any(venv_dir.iterdir()) and not (venv_dir / "pyvenv.cfg").exists():
        raise S3LaunchError(f"{venv_dir} is not a virtual environment; refusing to clear it")


def _install(venv_dir: Path) -> None:
    _refuse_foreign_directory(venv_dir)
    started = time.monotonic()
    log.info("installing LocalStack into %s (about 35 s)", venv_dir)
    install_log = install_log_path(venv_dir)
    install_log.write_bytes(b"")  # one attempt per log: its tail must show this failure
    # Rebuilt from scratch rather than patched, so that no package of an earlier pin set
    # or of another Python version survives: the venv holds exactly LOCALSTACK_PINS.
    _run_logged([sys.executable, "-m", "venv", "--clear", str(venv_dir)], install_log)
    pip_install = [
        str(_venv_python(venv_dir)),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        *LOCALSTACK_PINS,
    ]
    _run_logged(pip_install, install_log)
    # Written last: a marker only ever describes a completed installation.
    (venv_dir / MARKER_NAME).write_text(_marker_text())
    log.info("LocalStack installed in %.1f s", time.monotonic() - started)


def ensure_installed(venv_dir: Path = DEFAULT_VENV_DIR) -> Path:
    """Create (or rebuild) the LocalStack venv at venv_dir and return its python.

    Costs one file read when the marker shows that the current pins are installed.
    """
    if not is_installed(venv_dir):
        with _install_lock(venv_dir):
            if not is_installed(venv_dir):  # another process may have finished meanwhile
                _install(venv_dir)
    return _venv_python(venv_dir)


# --------------------------------------------------------------------------- servers


def _http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    # http.client rather than urllib/httpx: those honour HTTP(S)_PROXY variables, and a
    # proxy must never sit between the stack and its loopback servers.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _s3_running(port: int) -> bool:
    status, body = _http_get(port, "/_localstack/health")
    return status == 200 and json.loads(body).get("services", {}).get("s3") == "running"


def _answers_http(port: int) -> bool:
    status, _ = _http_get(port, "/")
    return status > 0


class _S3Server(ServerHandle):
    """Common part of both S3 launchers: one process, one port, one endpoint URL."""

    name = "s3"
    verifies_signatures = False
    log_name: str  # in data_dir, like the server's data
    default_data_dir: Path

    def __init__(self) -> None:
        self.port: int | None = None

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name} is not started")
        return f"http://127.0.0.1:{self.port}"

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for boto3.client("s3", ...) that reach this endpoint."""
        return {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": ACCESS_KEY_ID,
            "aws_secret_access_key": SECRET_ACCESS_KEY,
            "region_name": REGION,
        }

    def start(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        timeout: float = START_TIMEOUT,
    ) -> Self:
        """Start the server in data_dir (default: default_data_dir) and wait until it serves S3."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running at {self.endpoint_url}")
        data_dir = self.default_data_dir if data_dir is None else data_dir
        self._prepare(data_dir)
        self.port = port = port or free_port()
        args, env = self._command(port, data_dir)
        self.process = ManagedProcess(args, data_dir / self.log_name, env=env, cwd=data_dir, name=self.name)
        started = time.monotonic()
        self.process.start_until_ready(lambda: self._ready(port), timeout, interval=0.2, error=S3LaunchError)
        log.info("%s ready at %s in %.1f s", self.name, self.endpoint_url, time.monotonic() - started)
        return self

    def _prepare(self, data_dir: Path) -> None:  # this and the next two differ between the servers
        data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _ready(self, port: int) -> bool:
        return _answers_http(port)

    def __repr__(self) -> str:
        url = self.endpoint_url if self.port else "not started"
        return f"<{type(self).__name__} {url}>"


def _inherited(base: Mapping[str, str]) -> dict[str, str]:
    return {key: base[key] for key in _INHERITED_ENV if key in base}


def localstack_env(port: int, data_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment LocalStack needs to check signatures and stay inside data_dir."""
    return python_env(
        _inherited(os.environ if base is None else base),
        S3_SKIP_SIGNATURE_VALIDATION="0",  # LocalStack's default is to skip the checks
        SERVICES="s3",
        EAGER_SERVICE_LOADING="1",
        GATEWAY_LISTEN=f"127.0.0.1:{port}",
        # The default server binds 0.0.0.0 whatever GATEWAY_LISTEN says.
        GATEWAY_SERVER="hypercorn",
        # This machine has /.dockerenv; without the override LocalStack would write to
        # /var/lib/localstack.
        OVERRIDE_IN_DOCKER="0",
        FILESYSTEM_ROOT=str(data_dir / "filesystem"),
        LOCALSTACK_VOLUME_DIR=str(data_dir / "volume"),
        SKIP_SSL_CERT_DOWNLOAD="1",
        DISABLE_EVENTS="1",
        DNS_ADDRESS="0",
        PERSISTENCE="0",
    )


class LocalStackS3(_S3Server):
    """LocalStack S3 in host mode; verifies presigned signatures, expiry and checksums."""

    name = "LocalStack S3"
    verifies_signatures = True
    log_name = "localstack.log"
    default_data_dir = DEFAULT_DATA_DIR

    def __init__(self, venv_dir: Path = DEFAULT_VENV_DIR) -> None:
        super().__init__()
        self.venv_dir = venv_dir

    def _prepare(self, data_dir: Path) -> None:
        if not is_installed(self.venv_dir):
            raise S3LaunchError(
                f"LocalStack is not installed in {self.venv_dir}; call ensure_installed() first"
            )
        for sub in ("filesystem", "volume"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)

    def _command(self, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
        args = [str(_venv_python(self.venv_dir)), "-m", "localstack.runtime.main"]
        return args, localstack_env(port, data_dir)

    def _ready(self, port: int) -> bool:
        return _s3_running(port)


class MotoS3(_S3Server):
    """moto's S3 server: a fallback only, it accepts tampered and expired URLs."""

    name = "moto S3"
    verifies_signatures = False
    log_name = "moto.log"
    default_data_dir = DEFAULT_MOTO_DATA_DIR

    def _prepare(self, data_dir: Path) -> None:
        log.warning(
            "Using moto as the S3 endpoint: moto does NOT check presigned-URL signatures "
            "or expiry, so uploads that production S3 would refuse (wrong Content-Type, "
            "wrong length, extra headers, expired URLs) succeed here."
        )
        super()._prepare(data_dir)

    def _command(self, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        return args, python_env(_inherited(os.environ))


def start_s3(
    prefer: Literal["localstack", "moto"] = "localstack",
    data_dir: Path = DEVSTACK_DIR,
    port: int | None = None,
    venv_dir: Path = DEFAULT_VENV_DIR,
) -> LocalStackS3 | MotoS3:
    """Start LocalStack S3, or moto (with a warning) when LocalStack cannot run.

    data_dir receives a "localstack" or "moto" sub-directory for data and logs.
    """
    if prefer == "localstack":
        try:
            return _start_localstack(venv_dir, data_dir / "localstack", port)
        except (S3LaunchError, OSError, subprocess.SubprocessError) as exc:
            log.warning("LocalStack unavailable, falling back to moto: %s", exc)
    return MotoS3().start(port=port, data_dir=data_dir / "moto")


def _start_localstack(venv_dir: Path, data_dir: Path, port: int | None) -> LocalStackS3:
    ensure_installed(venv_dir)
    try:
        return LocalStackS3(venv_dir).start(port=port, data_dir=data_dir)
    except S3LaunchError as exc:
        if port is not None:
            raise
        # A port found free can be taken before LocalStack binds it: one retry on another
        # port keeps that race from degrading the stack to moto.
        log.warning("LocalStack did not start, retrying on another port: %s", exc)
    return LocalStackS3(venv_dir).start(data_dir=data_dir)


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=DEVSTACK_DIR)
    parser.add_argument("--prefer", choices=("localstack", "moto"), default="localstack")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM and SIGINT become KeyboardInterrupt, so that the `with` block stops the
    # server (in a process group of its own, which the signal does not reach).
    on_stop_signals()
    with start_s3(prefer=args.prefer, data_dir=args.data_dir, port=args.port) as s3:
        print(f"S3 endpoint:   {s3.endpoint_url}")
        print(f"credentials:   {ACCESS_KEY_ID} / {SECRET_ACCESS_KEY}, region {REGION}")
        print(f"signatures:    {'verified' if s3.verifies_signatures else 'NOT verified'}")
        print("Ctrl-C to stop")
        try:
            while s3.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        else:
            print(f"{s3.name} exited unexpectedly", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
