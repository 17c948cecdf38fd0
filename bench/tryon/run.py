"""One benchmark invocation: set up the stack, Run 1 per configuration, Run 2 per
concurrency, then the in-process profile. Every phase has a hard timeout."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common.database import fresh_database
from bench.common.machine import loadavg
from bench.common.paths import REPO_ROOT, VENV_BIN
from bench.tryon.config import Config, plan_jobs, stack_env
from bench.tryon.guards import arm, disarm, wait_for_others
from bench.tryon.layout import layout_costs, pss_by_process
from bench.tryon.load import run_burst, run_overhead
from bench.tryon.profile import component_profile, micro_costs
from bench.tryon.report import print_burst, print_micro, print_overhead, print_profile
from bench.tryon.stack import Stack
from bench.tryon.uploads import prepare_uploads, selfie_bytes
from devstack.fal_emulator import FalEmulatorProcess, start_emulator_process
from devstack.localstack import MotoS3
from devstack.procs import free_port
from devstack.redis_server import start_redis
from shared.access.auth import issue_dev_token
from shared.core.config import load_settings


def _setup_storage(env: dict[str, str]) -> None:
    r = subprocess.run([str(VENV_BIN / "hairfluencer"), "setup-storage"], env=env, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"setup-storage failed: {r.stdout}{r.stderr}")


def _before_run(stack: Stack, config: Config, args: argparse.Namespace,
                restart: bool = True) -> dict[str, Any]:
    """A fresh API and workers and an empty broker (unless `restart` is False), other
    load waited for; then the run's hard timeout is armed. Returns the layout's
    idle costs (PSS and CPU of each process)."""
    if restart:
        arm(180)
        stack.stop_app()
        stack.purge_broker()
        stack.start(config)
    disarm()
    if not args.no_wait:
        wait_for_others()
    time.sleep(3)  # let the fresh workers settle
    costs = layout_costs(stack)
    arm(args.run_timeout + 240)
    return costs


def run_all(args: argparse.Namespace, configs: list[Config], run2_config: Config,
            result: dict[str, Any], es: contextlib.ExitStack, tmp: Path, logs: Path) -> None:
    if not args.no_wait:  # setup (uploads, validation) is load too
        wait_for_others()
    arm(300)  # setup
    t_setup = time.monotonic()
    db = es.enter_context(fresh_database("hf_tryon_bench"))
    redis = es.enter_context(start_redis(tmp / "redis"))
    s3 = es.enter_context(MotoS3().start(data_dir=tmp / "moto"))
    fal: FalEmulatorProcess = es.enter_context(start_emulator_process(
        tmp / "fal", latency=args.latency, workers=args.emulator_workers))
    prom = tmp / "prometheus"
    prom.mkdir()
    api_port = free_port()
    env = stack_env(db, s3, redis, fal, api_port, prom)
    _setup_storage(env)
    result["settings"]["endpoints"] = {"s3": s3.endpoint_url, "redis": redis.url,
                                       "fal": fal.base_url, "api": f"http://127.0.0.1:{api_port}"}
    print(f"S3 (moto) {s3.endpoint_url}, Redis {redis.url}, fal emulator {fal.base_url}, "
          f"API :{api_port}", flush=True)
    stack = Stack(env, api_port, logs, tmp)
    es.callback(stack.stop)
    stack.start_beat()
    stack.start(configs[0])
    settings = load_settings(env)
    users = [f"bench-user-{i:03d}" for i in range(args.users)]
    tokens = {u: issue_dev_token(settings, u, 6 * 3600) for u in users}
    selfie = selfie_bytes(args.selfie_side)
    uploads = prepare_uploads(stack.base, tokens, selfie, db)
    result["settings"]["selfie_bytes"] = len(selfie)
    print(f"setup done in {time.monotonic() - t_setup:.0f} s: {len(uploads)} uploads ready",
          flush=True)
    others = {"fal emulator": [fal.process.pid], "moto S3": [s3.process.pid],  # type: ignore[list-item, union-attr]
              "redis": [redis.process.pid]}  # type: ignore[list-item, union-attr]
    plan = plan_jobs(users, uploads, args.jobs)
    run_tag = uuid.uuid4().hex[:8]
    for n, config in enumerate(configs if args.jobs > 0 else []):
        idle = _before_run(stack, config, args, restart=bool(n) or stack.config != config)
        print(f"\nRun 1 [{config.label}] {args.jobs} try-ons, latency {args.latency} s, "
              f"load {loadavg()}", flush=True)
        res = run_burst(stack, fal, db, plan, tokens, args, others, f"{run_tag}-r1-{n}")
        res["latency_s"] = args.latency
        res["layout"] = {**idle, "pss_mib_after": pss_by_process(stack)}
        result["runs"].append(res)
        print_burst(res)
    if not args.skip_run2:
        result["run2"] = []
        for conc in [int(c) for c in str(args.run2_concurrency).split(",") if c.strip()]:
            # Always a fresh worker and an empty broker: Run 1 left ~1,000 deadline tasks
            # (ETA 2 min after submit, no-ops for finished jobs) that would fire mid-run.
            _before_run(stack, run2_config, args)
            print(f"\nRun 2 [{run2_config.label}] {args.run2_jobs} try-ons, latency 0, "
                  f"{conc} in flight", flush=True)
            r2 = run_overhead(stack, fal, db, plan_jobs(users, uploads, args.run2_jobs), tokens,
                              args, f"{run_tag}-r2-{conc}", conc)
            result["run2"].append(r2)
            print_overhead(r2)
    arm(300)
    fal.configure(latency_seconds=0)
    print(f"\nin-process profile of tryons.run + tryons.complete ({args.profile_jobs} jobs, "
          "one at a time, latency 0)", flush=True)
    result["component_profile"] = component_profile(
        env, plan_jobs(users, uploads, args.profile_jobs + 1), args.profile_jobs)
    print_profile(result["component_profile"])
    result["micro"] = micro_costs(env, selfie)
    print_micro(result["micro"])
