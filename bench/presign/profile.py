"""One presign profiled in-process: WSGI calls straight into the Flask app (the way
gunicorn calls it) against the same PostgreSQL and Redis, and into the bare app."""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Any

from api.app import create_app
from bench import bare_app
from bench.common.procfs import system_busy_seconds
from bench.common.quiet import wait_quiet
from bench.common.stats import time_calls
from bench.presign.instrument import instrumented_run, noise_gauge
from bench.presign.report import print_profile
from bench.presign.request import WsgiCaller
from bench.presign.round_trips import count_pg_round_trips, count_redis_commands
from bench.presign.sampling import pyinstrument_profile, sampling_profile
from bench.presign.what_if import what_if
from shared.core.config import load_settings


def timed_with_cpu(caller: WsgiCaller, n: int) -> dict[str, Any]:
    """time_calls, plus this process's CPU (and its sys part) per call and how busy
    the machine was meanwhile."""
    busy0, ru0, t0 = system_busy_seconds(), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    res: dict[str, Any] = time_calls(caller, n)
    ru1, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - t0
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    res["cpu_us_per_request"] = round(own / n * 1e6, 1)
    res["sys_us_per_request"] = round((ru1.ru_stime - ru0.ru_stime) / n * 1e6, 1)
    res["machine_busy_fraction"] = round(
        (system_busy_seconds() - busy0) / (wall * (os.cpu_count() or 1)), 3)
    return res


def lean_prototype(env: dict[str, str], tokens: list[str], n: int) -> dict[str, Any]:
    os.environ.update(env)
    # Imported here, not at the top: lean_app reads its settings from the environment
    # when it is imported, so the variables above must be set first.
    from bench import lean_app

    lean = WsgiCaller(lean_app.app, tokens)
    for _ in range(100):
        lean()
    return time_calls(lean, n)


def profile(args: argparse.Namespace, env: dict[str, str], tokens: list[str], run_id: str) -> dict[str, Any]:
    app = create_app(load_settings(env), configure_logs=False)
    caller = WsgiCaller(app, tokens)
    bare = WsgiCaller(bare_app.app, tokens)
    n = args.profile_requests
    for _ in range(200):
        caller()
        bare()
    res: dict[str, Any] = {"quiet_check": wait_quiet(args.max_quiet_wait)}
    res["in_process_full"] = timed_with_cpu(caller, n)
    res["in_process_bare"] = time_calls(bare, n * 2)
    if args.lean:
        res["in_process_lean_prototype"] = lean_prototype(env, tokens, n)
    res["in_process_ratio_bare_over_full"] = round(
        res["in_process_bare"]["mean_us"] / res["in_process_full"]["mean_us"], 3)
    gauge: dict[str, Any] = {}
    with noise_gauge(gauge):
        res["instrumented"] = instrumented_run(app, caller, n)
    res["instrumented"]["noise"] = gauge
    res["redis"] = count_redis_commands(caller, 200)
    res["postgres"] = count_pg_round_trips(app, caller, 100)
    res["sampler"] = sampling_profile(caller, max(400, n // 2))
    res["pyinstrument"] = pyinstrument_profile(caller, 150)
    res["what_if_not_implemented"] = what_if(app, run_id, max(300, n // 2))
    app.extensions["hairfluencer"].svc.engine.dispose()
    print_profile(res, n)
    return res
