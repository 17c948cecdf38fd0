"""Command line and main of bench/soak_bench.py."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from bench.common.machine import git_revision, machine_info, machine_line
from bench.common.paths import RESULTS_DIR
from bench.common.report import utc_stamp, write_result
from bench.soak.logscan import scan_logs
from bench.soak.report import print_results
from bench.soak.run import run_soak
from bench.tryon.guards import HardTimeout, disarm, install_handlers


def parse_args(description: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    p.add_argument("--warmup", type=float, default=60.0,
                   help="seconds of traffic before the first PSS reading that growth is measured from")
    p.add_argument("--rate", type=float, default=2.0,
                   help="user sessions started per second (2: about half of these 2 cores)")
    p.add_argument("--tryons-per-session", type=int, default=2,
                   help="styles each session tries on its selfie, one after the other")
    p.add_argument("--max-in-flight", type=int, default=32,
                   help="sessions at once at most (a start finding all busy is skipped)")
    p.add_argument("--max-requests", type=int, default=100_000, help="requests at most")
    p.add_argument("--drain", type=float, default=60.0,
                   help="seconds sessions in flight may take to finish after --duration")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--selfie-side", type=int, default=1024, help="the selfie is side x side px")
    p.add_argument("--fal-latency", type=float, default=2.0,
                   help="the fal emulator's seconds per job (the dev stack's default)")
    p.add_argument("--growth-limit", type=float, default=10.0,
                   help="PSS growth (%%) allowed from the warm-up's end to the end")
    p.add_argument("--setup-timeout", type=float, default=300.0)
    p.add_argument("--no-wait", action="store_true", help="do not wait for other benchmarks/tests")
    args = p.parse_args()
    if not 0 < args.warmup < args.duration:
        p.error("--warmup must be between 0 and --duration")
    if args.rate <= 0 or args.max_in_flight < 1 or args.max_requests < 1:
        p.error("--rate, --max-in-flight and --max-requests must be positive")
    return args


def _result(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    return {
        "benchmark": "soak", "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git": git_revision(), "machine": machine_info(),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "rate_per_s": args.rate,
                     "tryons_per_session": args.tryons_per_session,
                     "max_in_flight": args.max_in_flight, "max_requests": args.max_requests,
                     "drain_s": args.drain, "users": args.users, "selfie_side": args.selfie_side,
                     "fal_latency_s": args.fal_latency, "growth_limit_pct": args.growth_limit,
                     "stack": "devstack.dev.running_stack on a fresh PostgreSQL database",
                     "logs": str(logs)},
        "minutes": [], "pss": {}, "pss_samples": [],
    }


def main(description: str | None = None) -> int:
    args = parse_args(description)
    install_handlers()
    stamp = utc_stamp()
    logs = RESULTS_DIR / f"soak-logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hf-soak-bench-"))
    result = _result(args, logs)
    print(machine_line(result["machine"]), flush=True)
    exit_code = 0
    try:
        with contextlib.ExitStack() as es:
            try:
                run_soak(args, result, es, tmp, logs)
            finally:
                disarm()  # cleanup (ExitStack) is never cut short by the alarm
        print_results(result)
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
        result["logs_scan"] = scan_logs(logs)
        shutil.rmtree(tmp, ignore_errors=True)
        path = write_result("soak", result)
        print(f"\nlog problems: {result['logs_scan']['summary']}\nwrote {path}")
    return exit_code
