"""Command line and main of bench/presign_bench.py."""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from bench.common.database import fresh_database
from bench.common.machine import git_revision, machine_info, machine_line
from bench.common.paths import REPO_ROOT
from bench.common.quiet import add_quiet_options
from bench.common.report import write_result
from bench.presign.load import load_tests
from bench.presign.profile import profile
from bench.presign.report import summarise
from bench.presign.request import write_lua
from bench.presign.stack import bench_env, cleanup_redis, row_counts
from shared.access.auth import issue_dev_token
from shared.core.config import load_settings


def parse_args(description: str | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of wrk warm-up per server")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=lambda v: [int(x) for x in v.split(",")], default=[16, 4])
    ap.add_argument("--kinds", type=lambda v: v.split(","), default=["sync", "gthread"])
    ap.add_argument("--gthread-threads", type=int, default=4)
    ap.add_argument("--users", type=int, default=64, help="distinct users (tokens) in the load")
    ap.add_argument("--profile-requests", type=int, default=1000)
    add_quiet_options(ap, attempts=2, what="wrk run", retried="run")
    ap.add_argument("--lean", action="store_true",
                    help="also load the PROTOTYPE bench/lean_app.py (adds ~1 min)")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--target-ratio", type=float, default=0.60)
    ap.add_argument("--target-p99-ms", type=float, default=50.0)
    return ap.parse_args()


def main(description: str | None = None) -> None:
    args = parse_args(description)
    started = time.monotonic()
    info = machine_info()
    run_id = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {"benchmark": "presign", "machine": info, "git": git_revision(),
                              "args": dict(vars(args)), "run_id": run_id}
    print(machine_line(info))
    try:
        with fresh_database("hf_bench") as db_url:
            env = bench_env(db_url)
            settings = load_settings(env)
            tokens = [issue_dev_token(settings, f"bench-{run_id}-{i}", 3600)
                      for i in range(args.users)]
            lua = write_lua(tokens)
            result["env"] = {k: env[k] for k in ("PRESIGN_DAILY_QUOTA", "USER_RATE_LIMIT",
                                                 "IP_RATE_LIMIT", "LOG_LEVEL", "S3_ENDPOINT_URL")}
            if not args.skip_load:
                rows = load_tests(args, env, db_url, lua)
                result["runs"] = [{k: v for k, v in r.items() if k != "raw"} | {"wrk_output": r["raw"]}
                                  for r in rows]
                result["summary"] = summarise(rows, args.target_ratio, args.target_p99_ms)
            if not args.skip_profile:
                result["profile"] = profile(args, env, tokens, run_id)
            result["db_rows_at_end"] = dict(zip(("uploads", "audit_events"), row_counts(db_url),
                                                strict=True))
    finally:
        removed = cleanup_redis(run_id)
        print(f"removed {removed} Redis keys of run {run_id}")
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    path = write_result("presign", result)
    print(f"\nwrote {path.relative_to(REPO_ROOT)} ({result['elapsed_s']} s)")
