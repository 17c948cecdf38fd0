"""A throw-away Redis for development and tests.

A real `redis-server` is used when installed; otherwise fakeredis's TCP server (in a
subprocess, so it behaves like an external service and dies with `stop()`). Neither
persists anything: the stack's Redis holds only queues, rate limits and caches.
"""

from __future__ import annotations

import logging
import shutil
import socket
import sys
from pathlib import Path
from typing import Literal

from devstack.procs import ManagedProcess, ServerHandle, free_port, python_env

log = logging.getLogger(__name__)

START_TIMEOUT = 15.0

# Runs in a fresh interpreter; kept inline so the fallback does not depend on this
# repository being importable from the child's working directory.
_FAKE_SERVER_CODE = """
import sys
from fakeredis import TcpFakeServer
server = TcpFakeServer(("127.0.0.1", int(sys.argv[1])), server_type="redis")
server.daemon_threads = True  # idle client connections must not block shutdown
print("fakeredis listening on 127.0.0.1:" + sys.argv[1], flush=True)
server.serve_forever()
"""

Kind = Literal["redis-server", "fakeredis"]


def ping(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True when the server on host:port answers PING with PONG (raw RESP, no client)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64).startswith(b"+PONG")


class RedisServer(ServerHandle):
    """A running Redis (real or fake) on 127.0.0.1; `.url` is a redis:// URL."""

    def __init__(self, process: ManagedProcess, port: int, kind: Kind) -> None:
        self.process = process
        self.port = port
        self.kind = kind

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        return f"<RedisServer {self.kind} {self.url}>"


def _redis_server_process(binary: str, port: int, data_dir: Path) -> ManagedProcess:
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",  # no RDB snapshots: the data is disposable
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",  # a daemon would escape its ManagedProcess
        "--logfile",
        "",  # log to stdout, i.e. into our log file
    ]
    return ManagedProcess(args, data_dir / "redis.log", cwd=data_dir, name="redis-server")


def _fakeredis_process(port: int, data_dir: Path) -> ManagedProcess:
    args = [sys.executable, "-c", _FAKE_SERVER_CODE, str(port)]
    return ManagedProcess(args, data_dir / "fakeredis.log", env=python_env(), cwd=data_dir, name="fakeredis")


def _choose_kind(prefer: Kind | None) -> tuple[Kind, str | None]:
    binary = shutil.which("redis-server")
    if prefer == "fakeredis" or binary is None:
        if prefer != "fakeredis":
            log.warning("redis-server not on PATH; using fakeredis's TCP server instead")
        return "fakeredis", None
    return "redis-server", binary


def start_redis(data_dir: Path, port: int | None = None, prefer: Kind | None = None) -> RedisServer:
    """Start Redis on a free 127.0.0.1 port and wait until it answers PING.

    prefer="fakeredis" forces the fallback (used to test it); by default a real
    redis-server is used when one is installed. Raises LaunchError (a RuntimeError)
    when the server exits first or does not answer in time.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    kind, binary = _choose_kind(prefer)
    if binary is not None:
        process = _redis_server_process(binary, port, data_dir)
    else:
        process = _fakeredis_process(port, data_dir)
    process.start_until_ready(lambda: ping(port), START_TIMEOUT, interval=0.05)
    server = RedisServer(process, port, kind)
    log.info("%s ready at %s", kind, server.url)
    return server
