"""Command line and main of bench/tryon_bench.py."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common.machine import git_revision, machine_info
from bench.common.paths import RESULTS_DIR
from bench.common.report import utc_stamp, write_result
from bench.tryon.config import Config
from bench.tryon.guards import HardTimeout, disarm, install_handlers
from bench.tryon.run import run_all

VERSIONS = ("celery", "kombu", "moto", "gunicorn", "fal-client", "httpx", "psycopg", "pillow")


def parse_args(description: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--jobs", type=int, default=1000, help="Run 1 try-ons per config (0: no Run 1)")
    p.add_argument("--latency", type=float, default=10.0, help="emulator latency in Run 1 (s)")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--client-threads", type=int, default=32)
    p.add_argument("--configs", default="sync:2+hooks:2/pools",
                   help="comma-separated API/worker shapes for Run 1: `pools` is the dev "
                        "stack.s layout (shared/core/pools.py), e.g. sync:2+hooks:2/pools,"
                        "sync:2/prefork:2,sync:2/pools;fal=threads:32,"
                        "sync:2/pools;finish=threads:8@tryons_done")
    p.add_argument("--run2-config", default=None, help="shape for Run 2 (default: first of --configs)")
    p.add_argument("--run2-jobs", type=int, default=200)
    p.add_argument("--run2-concurrency", default="4,1",
                   help="comma-separated: one Run 2 per value (jobs in flight)")
    p.add_argument("--skip-run2", action="store_true")
    p.add_argument("--emulator-workers", type=int, default=16)
    p.add_argument("--selfie-side", type=int, default=1024,
                   help="uploaded selfie (and so the emulator's result) is side x side px")
    p.add_argument("--profile-jobs", type=int, default=40,
                   help="jobs for the in-process component profile")
    p.add_argument("--run-timeout", type=float, default=600.0, help="hard limit per run (s)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for other benchmarks/tests")
    return p.parse_args()


def _result(args: argparse.Namespace, configs: list[Config], run2_config: Config,
            logs: Path) -> dict[str, Any]:
    return {
        "benchmark": "tryon", "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git": git_revision(), "machine": machine_info(),
        "versions": {n: metadata.version(n) for n in VERSIONS},
        "settings": {"jobs": args.jobs, "latency_s": args.latency, "users": args.users,
                     "client_threads": args.client_threads, "configs": [c.label for c in configs],
                     "run2": {"config": run2_config.label, "jobs": args.run2_jobs,
                              "concurrency": args.run2_concurrency},
                     "emulator_workers": args.emulator_workers, "selfie_side": args.selfie_side,
                     "s3": "moto server (devstack.localstack.MotoS3)", "db": "PostgreSQL (fresh database)",
                     "idempotency_key": True, "beat": True, "logs": str(logs)},
        "runs": [], "run2": None,
    }


def main(description: str | None = None) -> int:
    args = parse_args(description)
    configs = [Config.parse(c.strip()) for c in args.configs.split(",") if c.strip()]
    run2_config = Config.parse(args.run2_config) if args.run2_config else configs[0]
    install_handlers()
    logs = RESULTS_DIR / f"tryon-logs-{utc_stamp()}"
    logs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hf-tryon-bench-"))
    result = _result(args, configs, run2_config, logs)
    m = result["machine"]
    print(f"machine: {m['nproc']} x {m['cpu_model']}, {m['mem_total_gib']} GiB, "
          f"kernel {m['kernel']}", flush=True)
    exit_code = 0
    try:
        with contextlib.ExitStack() as es:
            try:
                run_all(args, configs, run2_config, result, es, tmp, logs)
            finally:
                disarm()  # cleanup (ExitStack) is never cut short by the alarm
    except (HardTimeout, KeyboardInterrupt) as exc:
        print(f"ABORTED: {exc!r}", file=sys.stderr)
        result["aborted"] = repr(exc)
        exit_code = 2
    except Exception as exc:  # noqa: BLE001 - recorded in the result file, then re-reported
        traceback.print_exc()
        result["error"] = repr(exc)
        exit_code = 1
    finally:
        disarm()
        shutil.rmtree(tmp, ignore_errors=True)
        path = write_result("tryon", result)
        print(f"\nwrote {path}")
    return exit_code
