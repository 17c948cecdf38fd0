"""The Procfile's processes started as a PaaS starts them, in production settings.

`release` runs first and alone and must exit 0 (`honcho start release`: honcho exits
with its exit code once it ends; `honcho run` runs a command line, not a Procfile
entry). Then every other entry starts by a honcho invocation of its own, as separate
hosts would run them: its own environment, working directory (also its HOME, so no
.env is read), TMPDIR, PORT and, for every process that serves metrics, its own
METRICS_PORT and PROMETHEUS_MULTIPROC_DIR. They reach each other and the outside only
by URL: a JWKS served by the test (tests/production/auth_server.py), the fal emulator
as fal, this machine's PostgreSQL (a fresh database the release step migrates) and
Redis (a database of the stack's own), LocalStack's S3 (bare buckets the release step
hardens), and a local Sentry (tests/sentry_inbox.py).

Stopping: each honcho is sent SIGTERM through its process group, and passes it to
the process groups of its entries (SIGKILL after 5 s). Any group honcho did not end,
and any process still carrying the stack's marker in its environment, is then
killed; so are they when starting fails halfway.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import psycopg
import redis

from devstack.fal_emulator.process import start_emulator_process
from devstack.procs import ManagedProcess, free_port, wait_until
from tests.conftest import PG_ADMIN_URL, REDIS_URL
from tests.production.auth_server import AuthServer
from tests.production.procfile import (
    FLOWER,
    HOOKS,
    RELEASE,
    WEB,
    CeleryWorker,
    bind_host,
    celery_worker,
    process_types,
    serves_metrics,
)
from tests.sentry_inbox import SentryInbox

VENV_BIN = Path(sys.executable).parent
# Queue names are fixed: a Redis database of the stack's own, so that no other test
# or development stack on this machine's Redis takes its tasks or hands it theirs.
REDIS_DB = 13
LOCK_KEY = "hairfluencer-production-stack"
MARKER = "HF_PRODUCTION_STACK"  # in every process's environment: what to clean up
RELEASE_TIMEOUT = 90.0
START_TIMEOUT = 60.0
# honcho passes SIGTERM on, but never escalates while no entry has ended; an idle
# gunicorn sync worker notices SIGTERM only at its next select() timeout (15 s), which
# the test does not wait for: SIGKILL after this long.
STOP_TIMEOUT = 8.0
STARTED = re.compile(r"\b([\w-]+)\.\d+ started \(pid=(\d+)\)")


@dataclass
class ProcessType:
    """One Procfile entry, started by its own honcho."""

    name: str
    honcho: ManagedProcess
    directory: Path
    env: dict[str, str]
    worker: CeleryWorker | None

    @property
    def log(self) -> str:
        return self.honcho.log_path.read_text(errors="replace")

    @property
    def metrics_url(self) -> str | None:
        port = self.env.get("METRICS_PORT")
        return f"http://127.0.0.1:{port}/metrics" if port else None

    def groups(self) -> list[int]:
        """The process groups honcho started (each entry's shell, exec'd into the server)."""
        return [int(pid) for name, pid in STARTED.findall(self.log) if name == self.name]


@dataclass
class Stack:
    procfile: Path
    types: dict[str, ProcessType]
    release_log: str
    web_url: str
    flower_url: str
    flower_login: tuple[str, str]
    broker_url: str
    database_url: str  # psycopg's form, for the test's own look at the database
    auth: AuthServer
    inbox: SentryInbox
    marker: str  # MARKER's value in every process's environment
    secrets: tuple[str, ...] = field(default=())  # what no log or event may contain

    @property
    def workers(self) -> dict[str, CeleryWorker]:
        return {name: t.worker for name, t in self.types.items() if t.worker is not None}

    def command_lines(self) -> list[str]:
        """The command line of every process of the stack running now."""
        lines = []
        for pid in _pids():
            if _carries(pid, self.marker):
                with contextlib.suppress(OSError):
                    lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                                 .decode(errors="replace"))
        return lines

    def type_running(self, queue: str) -> str:
        """The process type whose worker consumes `queue`."""
        (name,) = [name for name, worker in self.workers.items() if queue in worker.queues]
        return name


@contextlib.contextmanager
def production_stack(procfile: Path, s3_endpoint: str, root: Path) -> Iterator[Stack]:
    with ExitStack() as resources:
        yield _start(resources, procfile, s3_endpoint, root)


def _start(resources: ExitStack, procfile: Path, s3_endpoint: str, root: Path) -> Stack:
    entries = check_procfile(procfile)
    marker = uuid.uuid4().hex
    broker = _own_redis_database(resources, marker)
    database_url, sqlalchemy_url = _fresh_database(resources)
    uploads, processed = _bare_buckets(s3_endpoint)
    emulator = start_emulator_process(root / "fal-emulator", latency=0.3)
    resources.callback(emulator.stop)
    auth = AuthServer()
    resources.callback(auth.stop)
    inbox = SentryInbox()
    resources.callback(_close, inbox)

    web_port, flower_port, hooks_port = free_port(), free_port(), free_port()
    web_url, flower_url = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{flower_port}"
    # fal calls back the webhook listener where the Procfile has one, else web.
    hooks_url = f"http://127.0.0.1:{hooks_port}" if HOOKS in entries else web_url
    flower_login = ("ops", secrets.token_urlsafe(16))
    fal_key, webhook_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    # HAIRFLUENCER_ENV is left to the Procfile, whose default is production.
    settings = {
        "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1", MARKER: marker,
        "DATABASE_URL": sqlalchemy_url, "REDIS_URL": broker,
        "S3_ENDPOINT_URL": s3_endpoint, "S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "S3_UPLOADS_BUCKET": uploads, "S3_PROCESSED_BUCKET": processed,
        "JWT_JWKS_URL": auth.jwks_url, "JWT_ISSUER": auth.issuer, "JWT_AUDIENCE": auth.audience,
        "FAL_KEY": fal_key, "FAL_QUEUE_HOST": f"127.0.0.1:{emulator.port}",
        "FAL_WEBHOOK_JWKS_URL": emulator.jwks_url, "FAL_MEDIA_HOSTS": f"127.0.0.1:{emulator.port}",
        "SSL_CERT_FILE": str(emulator.ca_bundle_path),
        "WEBHOOK_SECRET": webhook_secret, "PUBLIC_BASE_URL": hooks_url,
        "SENTRY_DSN": inbox.dsn,
    }
    own = {
        WEB: {"PORT": str(web_port), "WEB_ADDRESS": "127.0.0.1"},
        HOOKS: {"HOOKS_PORT": str(hooks_port), "WEB_ADDRESS": "127.0.0.1"},
        FLOWER: {"FLOWER_PORT": str(flower_port), "FLOWER_ADDRESS": "127.0.0.1",
                 "FLOWER_BASIC_AUTH": ":".join(flower_login)},
    }
    types = {name: _prepare(procfile, name, command, root, {**settings, **own.get(name, {})})
             for name, command in entries.items()}
    resources.callback(_stop, list(types.values()), marker)

    release = types.pop(RELEASE)
    release_log = _run_release(release)
    for process in types.values():
        process.honcho.start()
    stack = Stack(procfile, types, release_log, web_url, flower_url, flower_login, broker,
                  database_url, auth, inbox, marker, (fal_key, webhook_secret, flower_login[1]))
    _wait_until_ready(stack)
    return stack


def _prepare(procfile: Path, name: str, command: str, root: Path,
             settings: dict[str, str]) -> ProcessType:
    directory = root / name
    (directory / "tmp").mkdir(parents=True)
    env = {"PORT": str(free_port()), **settings, "HOME": str(directory),
           "TMPDIR": str(directory / "tmp")}
    if serves_metrics(name):
        (directory / "prometheus").mkdir()
        env.update(METRICS_PORT=str(free_port()),
                   PROMETHEUS_MULTIPROC_DIR=str(directory / "prometheus"))
    honcho = ManagedProcess([str(VENV_BIN / "honcho"), "start", "-f", str(procfile),
                             "--no-colour", name], root / "logs" / f"{name}.log", env=env,
                            cwd=directory, name=f"honcho {name}")
    return ProcessType(name, honcho, directory, env, celery_worker(command))


def check_procfile(procfile: Path) -> dict[str, str]:
    """The Procfile's entries, once it is known that the stack can start: the types it
    knows by name are there, and web can be kept on loopback. Servers on this machine
    listen on loopback only: nothing is started while the web entry cannot be told to
    (a PaaS needs 0.0.0.0; a single host, or this test, does not)."""
    entries = process_types(procfile)
    missing = {RELEASE, WEB, FLOWER} - set(entries)
    assert not missing, f"{procfile} has no {sorted(missing)}"
    for name in (WEB, HOOKS):
        if name not in entries:
            continue
        host = bind_host(entries[name], {"PATH": "/usr/bin:/bin", "WEB_ADDRESS": "127.0.0.1",
                                         "PORT": "8000", "HOOKS_PORT": "8001"})
        assert host == "127.0.0.1", (
            f"the Procfile's {name} entry would listen on {host or 'every interface'} with "
            "WEB_ADDRESS=127.0.0.1 set: write its bind as `-b ${WEB_ADDRESS:-0.0.0.0}:…`")
    return entries


def _run_release(release: ProcessType) -> str:
    process = release.honcho.start()
    ended = wait_until(lambda: not process.alive(), RELEASE_TIMEOUT, interval=0.2)
    code = process.returncode
    process.stop()
    log = release.log
    assert ended, f"release still running after {RELEASE_TIMEOUT:.0f} s:\n{log[-3000:]}"
    assert code == 0, f"release exited with {code}:\n{log[-3000:]}"
    return log


def _wait_until_ready(stack: Stack) -> None:
    types = list(stack.types.values())

    def ready(process: ProcessType) -> bool:
        if process.metrics_url and httpx.get(process.metrics_url, timeout=2).status_code != 200:
            return False
        if process.worker and f"{process.worker.node} ready." not in process.log:
            return False
        if process.name in (WEB, HOOKS):
            url = process.env.get("HOOKS_PORT") if process.name == HOOKS else None
            base = f"http://127.0.0.1:{url}" if url else stack.web_url
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        if process.name == FLOWER:
            # Flower sees every worker through the broker (its task list needs it
            # connected before the first task runs).
            seen = httpx.get(f"{stack.flower_url}/api/workers", params={"refresh": "true"},
                             auth=stack.flower_login, timeout=5).json()
            return {w.node for w in stack.workers.values()} <= set(seen)
        return True

    up = wait_until(lambda: all(ready(p) for p in types), START_TIMEOUT, interval=0.5,
                    abort=lambda: not all(p.honcho.alive() for p in types))
    assert up, "the stack did not come up:\n" + "\n".join(  # the ones that exited first
        f"--- {p.name} ({'running' if p.honcho.alive() else 'exited'}) ---\n{p.honcho.log_tail(25)}"
        for p in sorted(types, key=lambda p: p.honcho.alive()))


def _stop(types: list[ProcessType], marker: str) -> None:
    started = [t for t in types if t.honcho.pid is not None]
    with ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:
        list(pool.map(lambda t: t.honcho.stop(timeout=STOP_TIMEOUT), started))
    for process in started:
        for group in process.groups():
            if any(_carries(pid, marker) for pid in _members(group)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
    for pid in _pids():
        if _carries(pid, marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _members(group: int) -> list[int]:
    members = []
    for pid in _pids():
        with contextlib.suppress(OSError):
            # the fields after the command's closing parenthesis: state ppid pgrp
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2]) == group:
                members.append(pid)
    return members


def _carries(pid: int, marker: str) -> bool:
    try:
        return f"{MARKER}={marker}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _own_redis_database(resources: ExitStack, marker: str) -> str:
    url = f"{REDIS_URL.rsplit('/', 1)[0]}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    resources.callback(client.close)
    assert client.set(LOCK_KEY, marker, nx=True, ex=600), (
        f"another production stack holds Redis database {REDIS_DB} ({LOCK_KEY}); it "
        "expires within 10 minutes")
    resources.callback(client.flushdb)
    for key in client.scan_iter():
        if key != LOCK_KEY.encode():
            client.delete(key)  # an earlier run's tasks and limits
    return url


def _fresh_database(resources: ExitStack) -> tuple[str, str]:
    """An empty database (the release step migrates it): psycopg's URL and the app's."""
    name = f"hf_prod_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    resources.callback(drop)
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}", f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"


def _bare_buckets(s3_endpoint: str) -> tuple[str, str]:
    """Buckets as an operator's infrastructure creates them: no policy, encryption,
    lifecycle or public access block until the release step's setup-storage."""
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    suffix = uuid.uuid4().hex[:8]
    names = (f"hf-prod-up-{suffix}", f"hf-prod-proc-{suffix}")
    for name in names:
        client.create_bucket(Bucket=name)
    return names


def _close(inbox: SentryInbox) -> None:
    inbox.server.shutdown()
    inbox.server.server_close()
