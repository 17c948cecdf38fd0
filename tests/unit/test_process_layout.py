"""The process layout is written in three places a PaaS, compose and a developer
run (Procfile, compose.yaml, devstack/dev.py) and declared once in Python
(shared/core/task_names.py): the literal queue lists and process names must agree
with the declaration and with each other (issue 16)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import yaml

from shared.core.pools import POOL_BY_NAME, max_db_connections
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


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def worker_commands() -> dict[str, dict[str, list[str]]]:
    """Each place's worker commands, by pool name."""
    dev = (REPO / "devstack" / "dev.py").read_text()
    dev_pools = {name: ["-Q", queues, "-P", kind] + (["-c", c] if c else [])
                 + (["--max-tasks-per-child", m] if m else [])
                 for name, queues, kind, c, m in re.findall(
                     r'"(\w+)": \["-Q", "([a-z_,]+)", "-P", "(\w+)"(?:, "-c", "(\d+)")?'
                     r'(?:, "-c", str\(workers\))?(?:,\s+"--max-tasks-per-child", "(\d+)")?', dev)}
    return {
        "Procfile": {name.removeprefix("worker-"): shlex.split(command)
                     for name, command in procfile().items() if name.startswith("worker-")},
        "compose": {name.removeprefix("worker-"): service["command"]
                    for name, service in compose_services().items() if name.startswith("worker-")},
        "devstack/dev.py": dev_pools,
    }


def test_every_pool_runs_as_declared_everywhere():
    for where, commands in worker_commands().items():
        assert sorted(commands) == sorted(POOL_BY_NAME), where
        served = [q for argv in commands.values() for q in queues_of(argv)]
        assert sorted(served) == sorted(ALL_QUEUES), where  # each queue, once
        for name, argv in commands.items():
            pool = POOL_BY_NAME[name]
            assert queues_of(argv) == list(pool.queues), (where, name)
            assert option(argv, "-P") == pool.kind, (where, name)
            if pool.concurrency is not None:
                assert option(argv, "-c") == str(pool.concurrency), (where, name)
            elif where != "devstack/dev.py":  # the dev stack's is --workers
                assert option(argv, "-c") is None, (where, name)  # one per core
            expected = pool.max_tasks_per_child
            assert option(argv, "--max-tasks-per-child") == (str(expected) if expected else None)
            if where != "devstack/dev.py":
                assert option(argv, "-n") == f"{name}@%h", (where, name)


def test_every_pool_starts_with_its_declared_environment():
    """What glibc must read before Python starts (MALLOC_ARENA_MAX for the threads
    pool) is in the Procfile's export and compose's environment; the dev stack, the
    fault suite and the benchmarks pass `Pool.environment` itself."""
    assert dict(POOL_BY_NAME["fal"].environment) == {"MALLOC_ARENA_MAX": "2"}
    for name, pool in POOL_BY_NAME.items():
        command = procfile()[f"worker-{name}"]
        environment = compose_services()[f"worker-{name}"]["environment"]
        for key, value in pool.environment:
            assert f"{key}=${{{key}:-{value}}}" in command.split(" && exec ")[0], name
            assert environment[key] == value, name
        assert environment["METRICS_PORT"] == "9100", name  # the merge kept the rest


def test_flower_keeps_the_same_bounded_task_store_everywhere():
    from devstack.flower import MAX_TASKS

    assert 0 < MAX_TASKS <= 10_000
    expected = f"--max_tasks={MAX_TASKS}"
    assert shlex.split(procfile()["flower"].split(" && exec ")[-1])[-1] == expected
    assert expected in compose_services()["flower"]["command"]
    assert expected in (REPO / "devstack" / "flower.py").read_text().replace(
        "{MAX_TASKS}", str(MAX_TASKS))


def test_the_database_connections_of_every_process_stay_under_max_connections():
    """The most connections each shape opens (docs/operations.md, "Database
    connections"), on this machine's core count: under PostgreSQL's default
    max_connections of 100, with room for migrations, psql and a second deploy's
    processes starting before the first's stop."""
    cores = os.cpu_count() or 1
    # gunicorn -w 2 sync workers for the API and for fal's webhooks (the Procfile's
    # WEB_CONCURRENCY and HOOKS_CONCURRENCY defaults)
    api = (2 + 2) * max_db_connections("sync", 1)
    for where, commands in worker_commands().items():
        # Each pool runs as many processes a host as it declares (fal: one per core;
        # compose writes it as the service's replicas, checked below).
        workers = sum(max_db_connections(option(argv, "-P") or "prefork",
                                         int(option(argv, "-c") or cores))
                      * POOL_BY_NAME[name].processes_per_host()
                      for name, argv in commands.items())
        assert api + workers <= 60, (where, api + workers)


def test_a_pool_of_one_process_per_core_says_so_everywhere():
    """compose has no "per core": its replicas say how many (this machine's cores,
    2, is what it is written for); the dev stack starts one per process_names()."""
    for name, pool in POOL_BY_NAME.items():
        replicas = compose_services()[f"worker-{name}"].get("deploy", {}).get("replicas", 1)
        assert replicas == (2 if pool.processes is None else pool.processes), name
    assert POOL_BY_NAME["fal"].processes is None
    dev = (REPO / "devstack" / "dev.py").read_text()
    assert "POOL_BY_NAME[pool].process_names()" in dev


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


def test_web_and_hooks_share_no_gunicorn_control_socket():
    """Both gunicorns run on one host in the dev stack and may in compose: a control
    socket at gunicorn's per-user default path would be shared (tests/e2e's stack saw
    `Control server error: Address ... gunicorn.ctl is already in use`)."""
    from gunicorn.config import Config

    from api import gunicorn_conf

    config = Config()
    for name, value in vars(gunicorn_conf).items():
        if name in config.settings:
            config.set(name, value)
    assert "control_socket_disable" in config.settings  # a setting gunicorn knows
    assert config.control_socket_disable is True


def test_each_process_of_a_pool_has_a_name_of_its_own():
    from dataclasses import replace

    fal = POOL_BY_NAME["fal"]
    assert replace(fal, processes=2).process_names() == ["fal-0", "fal-1"]
    assert POOL_BY_NAME["maintenance"].process_names() == ["maintenance"]
    assert len(fal.process_names()) == fal.processes_per_host() == (os.cpu_count() or 1)
