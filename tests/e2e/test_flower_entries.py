"""Flower as the Procfile and compose run it: never without basic auth, never on a
public interface by default (Flower can revoke tasks and shut workers down)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from devstack.procs import free_port, wait_until
from tests.e2e.test_dev_stack import _non_loopback_address

ROOT = Path(__file__).parents[2]
VENV_BIN = str(Path(sys.executable).parent)


def _procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} entry in the Procfile")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    # The Procfile defaults to production settings, which need a JWKS, fal and S3
    # of their own; Flower's auth is what this test is about.
    env["HAIRFLUENCER_ENV"] = "development"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.mark.parametrize("value", [None, ""])
def test_the_procfile_flower_refuses_to_start_without_a_login(value):
    env = _env() if value is None else _env(FLOWER_BASIC_AUTH=value)
    done = subprocess.run(["sh", "-c", _procfile_command("flower")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "FLOWER_BASIC_AUTH" in done.stderr


def test_the_procfile_flower_asks_for_the_login_and_listens_on_loopback():
    port = free_port()
    password = secrets.token_urlsafe(16)
    env = _env(FLOWER_BASIC_AUTH=f"ops:{password}", FLOWER_PORT=str(port),
               CELERY_BROKER_URL="redis://127.0.0.1:6379/14",
               REDIS_URL="redis://127.0.0.1:6379/14")
    process = subprocess.Popen(["sh", "-c", _procfile_command("flower")], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200,
                          30, interval=0.3, abort=lambda: process.poll() is not None)
        assert httpx.get(f"{url}/api/workers", timeout=10).status_code == 401
        assert httpx.get(f"{url}/", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/workers", auth=("ops", password),
                         timeout=10).status_code == 200
        if address := _non_loopback_address():
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
        # the password travels in the environment, not in the arguments `ps` shows
        args = subprocess.run(["ps", "-ww", "-o", "args=", "-g", str(process.pid)],  # -ww: whole lines
                              capture_output=True, text=True, timeout=10).stdout
        assert "flower" in args and password not in args
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    assert password not in process.stdout.read().decode(errors="replace")  # type: ignore[union-attr]


def test_compose_runs_flower_with_a_required_login_on_loopback():
    flower = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["flower"]
    # required, no default: compose refuses to start without it
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert not any("basic" in str(arg).lower() for arg in flower["command"])
    for port in flower.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), port
