"""Process handling shared by the development launchers, written once.

Every server is started in its own process group so that `stop()` also reaches the
children a server may fork, and so that Ctrl-C in the terminal of the
parent is not delivered to the servers twice.

- `ManagedProcess`: one such subprocess, its output in a log file;
  `start_until_ready()` starts it and waits for a readiness probe, or stops it and
  raises `LaunchError` with the last lines of its log;
- `ServerHandle`: the base of the launchers' handles (Redis, S3, the fal emulator):
  `alive()`, `stop()` and `with` for the process a launcher started;
- `StopsOnExit`: the context-manager protocol of everything above (`with x:` stops x);
- `free_port`, `port_accepts`, `wait_until`, `tail`, `python_env`, `on_stop_signals`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 10.0

# Processes still running when the interpreter exits are stopped, so a crashed test
# session or an exception between start() and stop() does not leave servers behind.
_running: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


class LaunchError(RuntimeError):
    """A server exited while starting, or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now.

    The port is released before returning, so another process could take it in
    between; launchers detect that case because their server then fails to start.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    abort: Callable[[], bool] | None = None,
) -> bool:
    """Poll `predicate` until it returns True; False on timeout or when `abort()` is True.

    Exceptions raised by the predicate count as "not yet": readiness probes typically
    fail with connection errors until the server listens.
    """
    deadline = time.monotonic() + timeout
    while True:
        if _probe(predicate):
            return True
        if abort is not None and abort():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _probe(predicate: Callable[[], bool]) -> bool:
    try:
        return bool(predicate())
    except Exception:  # noqa: BLE001 - a failing probe means "not ready yet"
        return False


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def on_stop_signals(handler: Callable[[int, FrameType | None], Any] = signal.default_int_handler) -> None:
    """Run `handler` on SIGTERM and SIGINT (SIGINT too: shells ignore it in background jobs).

    The default turns both into KeyboardInterrupt, so that `with` blocks stop the
    servers, which run in process groups of their own that a signal aimed at the
    launcher does not reach.
    """
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def python_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a Python child: `base` (default: ours) plus `extra`, unbuffered,
    so that its log is complete when its tail is shown."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def tail(path: Path, lines: int = 40, width: int = 400) -> str:
    """Last `lines` lines of a log file, each cut to `width` ('' when there is no file).

    Cut because some tools log enormous lines (pip lists every known version of a
    package it cannot resolve) that would bury the error message.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    last = text.splitlines()[-lines:]
    return "\n".join(line if len(line) <= width else line[:width] + " [...]" for line in last)


class StopsOnExit:
    """`with x:` returns x and calls `x.stop()` at the end of the block."""

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ManagedProcess(StopsOnExit):
    """A subprocess in its own process group whose output goes to a log file.

    `with ManagedProcess(...) as proc:` starts it (unless it was started already) and
    stops it at the end of the block.
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.args[0]).name
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def start(self) -> Self:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Append, so a restart keeps the previous run's output for diagnosis.
        self._log_file = self.log_path.open("ab")
        self._popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # new session => new process group led by the child
        )
        _running.add(self)
        log.debug("started %s (pid %s): %s", self.name, self._popen.pid, self.args)
        return self

    def start_until_ready(
        self,
        ready: Callable[[], bool],
        timeout: float,
        *,
        interval: float = 0.1,
        error: type[Exception] = LaunchError,
    ) -> Self:
        """start(), then wait until `ready()` is True (see wait_until).

        When the process exits first or `timeout` passes, it is stopped and `error` is
        raised with the exit code and the last lines of its log.
        """
        self.start()
        if not wait_until(ready, timeout, interval=interval, abort=lambda: not self.alive()):
            code = self.returncode
            self.stop()
            state = f"exited with code {code}" if code is not None else f"not ready in {timeout:.0f} s"
            raise error(f"{self.name} {state}; last lines of {self.log_path}:\n{self.log_tail()}")
        return self

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """SIGTERM the process group, SIGKILL it after `timeout`; return the exit code."""
        popen = self._popen
        if popen is None:
            return None
        if popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
                self._signal_group(signal.SIGKILL)
                popen.wait()
            # Helpers forked by the leader may outlive it; they are in the same group.
            # Done only right after the leader exited, while its pid cannot be reused.
            self._signal_group(signal.SIGKILL)
        _running.discard(self)
        self._close_log()
        return popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._popen is not None
        # The group id equals the leader's pid because of start_new_session=True.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        return self if self._popen is not None else self.start()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"


class ServerHandle(StopsOnExit):
    """A launcher's handle on the server process it started (`process`: None until then)."""

    process: ManagedProcess | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_running):
        proc.stop(timeout=5)
