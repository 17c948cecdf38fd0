"""`hairfluencer dev`: the whole system on embedded defaults, on one machine.

Starts, in this order: the signature-checking S3 endpoint (LocalStack's S3 in
host mode; moto only as a loudly announced fallback), Redis (the machine's
redis-server, else an embedded one), migrations on SQLite, bucket setup, then a
Celery worker, celery beat, the API under gunicorn and Flower (basic auth,
loopback; `--no-flower` leaves it out). Waits until /readyz is 200, prints the
URLs, a development token and Flower's login, and stops everything it started
on Ctrl-C or SIGTERM.

The database is the one thing that may be external: `--database-url` (or an
ambient `DATABASE_URL`) replaces the SQLite default, e.g. an empty PostgreSQL
database, which is migrated with Alembic exactly as the SQLite file is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import click
import httpx
from sqlalchemy.engine import make_url

from devstack.fal_emulator import FalEmulatorProcess, start_emulator_process
from devstack.flower import FLOWER_USER, flower_password, flower_process, flower_ready
from devstack.localstack import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, start_s3
from devstack.procs import ManagedProcess, free_port, on_stop_signals, tail, wait_until
from devstack.redis_server import start_redis
from shared.core.pools import POOL_BY_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT / ".devstack" / "dev"
DEV_USER = "dev-user"
READY_TIMEOUT = 120.0


def stack_environment(data_dir: Path, s3_url: str, redis_url: str, fal: FalEmulatorProcess,
                      webhook_port: int, database_url: str | None = None) -> dict[str, str]:
    """Settings for every process of the local stack (explicit values win); fal's
    webhooks go to `webhook_port` (the API's, or a listener of their own)."""
    env = dict(os.environ)
    if database_url:
        env["DATABASE_URL"] = database_url  # the flag wins over the environment
    defaults = {
        "HAIRFLUENCER_ENV": "development",
        "DATABASE_URL": f"sqlite:///{data_dir / 'hairfluencer.sqlite3'}",
        "S3_ENDPOINT_URL": s3_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "S3_REGION": REGION,
        "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "prometheus"),
        # Webhook mode: the emulator calls back into the API, as fal would.
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{webhook_port}",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    # The stack's own servers are not optional: they replace any ambient value.
    env["REDIS_URL"] = redis_url
    env["CELERY_BROKER_URL"] = redis_url
    env["S3_ENDPOINT_URL"] = s3_url
    env.update({
        "FAL_QUEUE_HOST": f"127.0.0.1:{fal.port}",
        "FAL_KEY": "emulator-key",
        "FAL_WEBHOOK_JWKS_URL": fal.jwks_url,
        "FAL_MEDIA_HOSTS": f"127.0.0.1:{fal.port}",
        # httpx and urllib trust the emulator's local CA (plus the system roots).
        "SSL_CERT_FILE": str(fal.ca_bundle_path),
    })
    return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@contextmanager
def running_stack(port: int, data_dir: Path, workers: int = 2, fal_latency: float = 2.0,
                  database_url: str | None = None, flower: bool = True) -> Iterator[dict[str, str]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    with ExitStack() as stack:  # every server entered here is stopped on the way out
        s3 = stack.enter_context(start_s3(data_dir=data_dir))
        redis = stack.enter_context(start_redis(data_dir / "redis"))
        fal = stack.enter_context(start_emulator_process(data_dir / "fal-emulator", latency=fal_latency))
        # fal's webhooks go to a listener of their own (the Procfile's `hooks`).
        hooks_port = free_port()
        env = stack_environment(data_dir, s3.endpoint_url, redis.url, fal, hooks_port,
                                database_url)
        prom = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        prom.mkdir(parents=True, exist_ok=True)
        for stale in prom.glob("*.db"):
            stale.unlink()
        hairfluencer = _bin("hairfluencer")
        _setup_step([hairfluencer, "migrate"], env)
        _setup_step([hairfluencer, "setup-storage"], env)
        # One Celery worker per pool (shared/core/pools.py; tests/unit/test_process_layout.py
        # holds these lists to it), each with its own log.
        pools = {
            "validation": ["-Q", "uploads", "-P", "prefork", "-c", str(workers),
                           "--max-tasks-per-child", "200"],
            "fal": ["-Q", "tryons_done,tryons", "-P", "threads", "-c", "8"],
            "maintenance": ["-Q", "maintenance,default", "-P", "prefork", "-c", "1",
                            "--max-tasks-per-child", "100"],
        }
        # Each process group serves its own metrics, as separate hosts would: its own
        # PROMETHEUS_MULTIPROC_DIR and METRICS_PORT (docs/operations.md, "Metrics").
        metrics: dict[str, str] = {}

        def group(name: str) -> dict[str, str]:
            group_env, metrics[name] = metrics_group(env, prom, name)
            return group_env

        # A pool declared one per core (fal) runs that many processes: worker-fal-0, -1…
        pool_processes = [(pool, argv, name) for pool, argv in pools.items()
                          for name in POOL_BY_NAME[pool].process_names()]
        processes = [
            *(ManagedProcess([_bin("celery"), "-A", "worker.app", "worker", *argv,
                              "--loglevel", "INFO", "-n", f"{name}-{port}@%h"],
                             logs / f"worker-{name}.log",
                             env={**group(f"worker-{name}"), **dict(POOL_BY_NAME[pool].environment)},
                             cwd=REPO_ROOT, name=f"worker-{name}")
              for pool, argv, name in pool_processes),
            ManagedProcess([_bin("celery"), "-A", "worker.app", "beat", "--loglevel", "INFO",
                            "-s", str(data_dir / "beat-schedule")],
                           logs / "beat.log", env=group("beat"), cwd=REPO_ROOT, name="beat"),
            ManagedProcess([_bin("gunicorn"), "-c", "python:api.gunicorn_conf",
                            "-b", f"127.0.0.1:{port}", "-w", "2", "api.wsgi:app"],
                           logs / "api.log", env=group("api"), cwd=REPO_ROOT, name="api"),
            ManagedProcess([_bin("gunicorn"), "-c", "python:api.gunicorn_conf",
                            "-b", f"127.0.0.1:{hooks_port}", "-w", "2", "api.wsgi:app"],
                           logs / "hooks.log", env=group("hooks"), cwd=REPO_ROOT, name="hooks"),
        ]
        flower_base = ""
        if flower:
            flower_port = free_port()
            flower_base = f"http://127.0.0.1:{flower_port}"
            flower_proc = flower_process(flower_port, env, logs / "flower.log", flower_password())
            processes.append(flower_proc)
        for process in processes:
            stack.enter_context(process)  # starts it
        base = f"http://127.0.0.1:{port}"
        hooks_base = f"http://127.0.0.1:{hooks_port}"
        if not wait_until(lambda: _ready(base) and _ready(hooks_base), READY_TIMEOUT,
                          interval=0.5,
                          abort=lambda: not all(p.alive() for p in processes)):
            dead = [p for p in processes if not p.alive()] or processes
            raise click.ClickException("the stack did not become ready:\n" + "\n".join(
                f"--- {p.name} ---\n{tail(p.log_path)}" for p in dead))
        # Started beside the others, so usually ready by now: this wait costs ~nothing.
        if flower and not wait_until(lambda: flower_ready(flower_base), READY_TIMEOUT,
                                     interval=0.3, abort=lambda: not flower_proc.alive()):
            raise click.ClickException(f"Flower did not start:\n{tail(logs / 'flower.log')}")
        if not wait_until(lambda: all(_answers(url) for url in metrics.values()), READY_TIMEOUT,
                          interval=0.3):
            raise click.ClickException("a metrics endpoint did not open: " + ", ".join(
                name for name, url in metrics.items() if not _answers(url)))
        env["HF_METRICS"] = " ".join(f"{name}={url}" for name, url in metrics.items())
        env["HF_FLOWER_URL"] = flower_base
        env["HF_BASE_URL"] = base
        env["HF_S3_KIND"] = type(s3).__name__
        env["HF_FAL_URL"] = fal.base_url
        yield env


def metrics_group(env: dict[str, str], root: Path, name: str) -> tuple[dict[str, str], str]:
    """A process group's environment with a metrics directory (emptied) and a free
    METRICS_PORT of its own, and the URL it serves its metrics on."""
    directory = root / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    metrics_port = free_port()
    return ({**env, "PROMETHEUS_MULTIPROC_DIR": str(directory), "METRICS_PORT": str(metrics_port),
             "METRICS_ADDRESS": "127.0.0.1"}, f"http://127.0.0.1:{metrics_port}/metrics")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _setup_step(command: list[str], env: dict[str, str]) -> None:
    """A one-off setup command; its own error output if it fails (a wrong
    --database-url must say why, not just which command failed)."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise click.ClickException(f"{Path(command[-1]).name} failed:\n{done.stderr[-3000:]}")


def shown_database_url(url: str) -> str:
    """The database URL as printed: never its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable: say so rather than echo it
        return "(unparsable DATABASE_URL)"


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@click.command("dev")
@click.option("--port", default=8000, show_default=True, help="API port (0 = a free one).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR,
              show_default=True, help="Where the SQLite file, logs and S3 data live.")
@click.option("--workers", default=2, show_default=True,
              help="Concurrency of the validation pool (prefork children).")
@click.option("--fal-latency", default=2.0, show_default=True,
              help="Seconds the fal emulator spends on each job.")
@click.option("--no-flower", "no_flower", is_flag=True, default=False,
              help="Do not start Flower.")
@click.option("--database-url", default=None, metavar="URL",
              help="SQLAlchemy URL of the database to migrate and use, e.g. an empty "
                   "PostgreSQL database: postgresql+psycopg://user@host/db. "
                   "[default: $DATABASE_URL, else SQLite in --data-dir]")
def dev_command(port: int, data_dir: Path, workers: int, fal_latency: float,
                database_url: str | None, no_flower: bool) -> None:
    """Run API, worker, beat, Redis and a signature-checking S3 locally."""
    port = port or free_port()
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    on_stop_signals(_stop)
    with running_stack(port, data_dir.resolve(), workers, fal_latency, database_url,
                       flower=not no_flower) as env:
        token = subprocess.run([_bin("hairfluencer"), "token", DEV_USER], env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
        base = env["HF_BASE_URL"]
        flower = ""
        if env["HF_FLOWER_URL"]:
            # The login on a line of its own, never inside the URL (browsers and
            # terminals keep URLs in their history).
            flower = (f"  Flower      {env['HF_FLOWER_URL']}   (basic auth; can revoke tasks: "
                      f"keep it on loopback)\nFlower login: user {FLOWER_USER} "
                      f"password {flower_password()}\n")
        metrics = "".join(f"  metrics     {url}   ({name})\n" for name, url in (
            entry.split("=", 1) for entry in env["HF_METRICS"].split()))
        click.echo(f"""
Hairfluencer is running (embedded defaults).
  API         {base}      docs {base}/docs   OpenAPI {base}/openapi.json
  health      {base}/healthz   {base}/readyz
{metrics}  S3          {env['S3_ENDPOINT_URL']} ({env['HF_S3_KIND']}; key/secret test/test)
  Redis       {env['REDIS_URL']}
  fal.ai      {env['HF_FAL_URL']} (offline emulator; webhooks to {env['PUBLIC_BASE_URL']})
  database    {shown_database_url(env['DATABASE_URL'])}
  logs        {data_dir / 'logs'}
  user        {DEV_USER}
  token       {token}
{flower}
  try it:     hairfluencer try-on tests/fixtures/astronaut.jpg --style bob --base-url {base}
READY {base}
""", nl=True)
        sys.stdout.flush()
        while not stop["now"]:
            time.sleep(0.3)
    click.echo("stopped")
