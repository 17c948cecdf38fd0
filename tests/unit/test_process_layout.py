"""The process layout is written in three places a PaaS, compose and a developer
run (Procfile, compose.yaml, devstack/dev.py) and declared once in Python
(shared/core/task_names.py): the literal queue lists and process names must agree
with the declaration and with each other (issue 16)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from shared.core.task_names import ALL_QUEUES, QUEUES

REPO = Path(__file__).resolve().parents[2]
# compose's names for the Procfile's process types; the rest of compose is the
# infrastructure a PaaS provides (database, Redis, object storage).
COMPOSE_NAME = {"release": "migrate", "web": "api"}
INFRASTRUCTURE = {"postgres", "redis", "minio"}


def procfile() -> dict[str, str]:
    entries = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def compose_services() -> dict[str, dict]:
    return yaml.safe_load((REPO / "compose.yaml").read_text())["services"]


def queues_of(argv: list[str]) -> list[str]:
    return argv[argv.index("-Q") + 1].split(",")


def test_every_routed_queue_is_declared_once():
    assert set(QUEUES.values()) <= set(ALL_QUEUES)
    assert len(ALL_QUEUES) == len(set(ALL_QUEUES))


def test_the_procfile_and_compose_name_the_same_processes():
    expected = {COMPOSE_NAME.get(name, name) for name in procfile()}
    assert set(compose_services()) - INFRASTRUCTURE == expected


def test_every_worker_command_consumes_exactly_the_declared_queues():
    commands = {
        "Procfile worker": shlex.split(procfile()["worker"]),
        "compose worker": compose_services()["worker"]["command"],
    }
    dev = (REPO / "devstack" / "dev.py").read_text()
    [dev_queues] = re.findall(r'"-Q", "([a-z_,]+)"', dev)
    commands["devstack/dev.py worker"] = ["-Q", dev_queues]
    for where, argv in commands.items():
        assert sorted(queues_of(argv)) == sorted(ALL_QUEUES), where


def test_compose_runs_a_try_on_in_production_shape():
    services = compose_services()
    app_services = set(services) - INFRASTRUCTURE
    for name in app_services:
        env = services[name]["environment"]
        assert env["HAIRFLUENCER_ENV"] == "production", name
        for needed in ("FAL_KEY", "WEBHOOK_SECRET", "PUBLIC_BASE_URL", "JWT_JWKS_URL"):
            assert needed in env, (name, needed)
        depends = services[name]["depends_on"]
        assert all(depends[s]["condition"] == "service_healthy" for s in INFRASTRUCTURE), name
        if name != "migrate":  # everything else waits for the release step
            assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
    assert all("healthcheck" in services[s] for s in INFRASTRUCTURE)
    assert [n for n, s in services.items() if "beat" in s.get("command", [])] == ["beat"]


def test_the_image_leaves_development_state_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".devstack/", ".venv/", "tests/", "bench/"} <= ignored


def test_every_procfile_entry_runs_with_production_settings_by_default():
    # A PaaS sets what it is told: HAIRFLUENCER_ENV unset would mean development,
    # whose shortcuts (the HS256 dev secret, moto) production refuses.
    for name, command in procfile().items():
        assert command.startswith("export HAIRFLUENCER_ENV=${HAIRFLUENCER_ENV:-production} && "), name
