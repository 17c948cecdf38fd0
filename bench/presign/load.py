"""The load tests: for each gunicorn worker kind, bare, full (and the --lean
prototype) under the same wrk load, with CPU per process group and a check that the
database got one upload and one audit row per 201."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common.procfs import pids_by_comm
from bench.common.quiet import quietest
from bench.common.wrk import run_wrk
from bench.presign.stack import GunicornServer, row_counts


def start_servers(kind: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, GunicornServer]:
    names = ["bare", "full"] + (["lean"] if args.lean else [])  # lean: a PROTOTYPE, NOT the app
    servers: dict[str, GunicornServer] = {}
    try:
        for name in names:
            servers[name] = GunicornServer(name, kind, args.gthread_threads, env)
    except BaseException:
        stop_servers(servers, kind)
        raise
    return servers


def stop_servers(servers: dict[str, GunicornServer], kind: str) -> None:
    for srv in servers.values():
        srv.stop()
        problems = srv.log_problems()
        if problems:
            print(f"!! {srv.name}/{kind} log has {len(problems)} error lines, e.g. "
                  f"{problems[0][:300]}")


def measure(srv: GunicornServer, lua: Path, args: argparse.Namespace, conns: int,
            db_url: str) -> dict[str, Any]:
    """One wrk run; the database's new rows counted for the apps that write them."""
    groups: dict[str, Callable[[], list[int]]] = {
        "gunicorn": srv.pids,
        "postgres": lambda: pids_by_comm("postgres"),
        "redis": lambda: pids_by_comm("redis-server"),
    }
    before = row_counts(db_url) if srv.name != "bare" else None
    r = run_wrk(srv.url, lua, threads=args.threads, connections=conns,
                duration=args.duration, cpu_groups=groups)
    if before is not None:
        after = row_counts(db_url)
        r["rows_added"] = {"uploads": after[0] - before[0], "audit_events": after[1] - before[1]}
    r["other_cores"] = round(r["cpu_seconds"].get("other", 0.0) / r["wall_seconds"], 2)
    return r


def print_run(kind: str, conns: int, name: str, r: dict[str, Any]) -> None:
    print(f"[{kind} c{conns}] {name}: {r['rps']:.0f} req/s  p50 {r['p50_ms']:.2f} ms"
          f"  p99 {r['p99_ms']:.2f} ms  non-2xx {r['non_2xx']}"
          f"  sock-err {sum(r['socket_errors'].values()) if r['socket_errors'] else 0}"
          f"  cpu s {r['cpu_seconds']} (user/sys {r['cpu_user_sys_seconds']})"
          f"  busy {r['machine_busy_fraction']:.0%}  other {r['other_cores']} cores"
          + (f"  rows {r['rows_added']}" if 'rows_added' in r else ""))
    sys.stdout.flush()


def load_tests(args: argparse.Namespace, env: dict[str, str], db_url: str,
               lua: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in args.kinds:
        servers = start_servers(kind, args, env)
        try:
            for name, srv in servers.items():  # warm: imports, pools, Lua scripts, boto client
                w = run_wrk(srv.url, lua, threads=args.threads, connections=max(args.connections),
                            duration=args.warmup)
                print(f"[{kind}] warm-up {name}: {w['rps']} req/s, non-2xx {w['non_2xx']}")
            for conns in args.connections:
                for name, srv in servers.items():
                    r = quietest(lambda srv=srv, conns=conns: measure(srv, lua, args, conns, db_url),
                                 "other_cores", args, on_retry=lambda r, name=name: print(
                                     f"   ({name}: other processes used {r['other_cores']} cores; retrying)"))
                    r.update(app=name, worker=kind if kind == "sync" else
                             f"gthread x{args.gthread_threads}", connections=conns,
                             wrk_threads=args.threads, duration_s=args.duration,
                             gunicorn_cmd=" ".join(srv.cmd))
                    rows.append(r)
                    print_run(kind, conns, name, r)
        finally:
            stop_servers(servers, kind)
    return rows
