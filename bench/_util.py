"""Helpers shared by the benchmark scripts in bench/ (not part of the test suite)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PACKAGES = ("flask", "werkzeug", "flask-smorest", "marshmallow", "gunicorn", "sqlalchemy",
            "psycopg", "redis", "limits", "boto3", "botocore", "pyjwt", "pillow",
            "pillow-heif", "numpy", "pyinstrument")


# --- machine ---------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(text)
    (RESULTS_DIR / f"{name}-latest.json").write_text(text)
    return path


# --- processes -------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, timeout: float = 20.0) -> bool:
    """Poll a GET until it answers (any status below 500)."""
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(request)
                head = s.recv(64).decode(errors="replace")
                m = re.match(r"HTTP/1\.[01] (\d{3})", head)
                if m and int(m.group(1)) < 500:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cpu_snapshot(pids: list[int]) -> dict[int, tuple[int, int]]:
    """pid -> (utime, stime) clock ticks (all threads) of the processes still alive."""
    snap = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        snap[pid] = (int(fields[11]), int(fields[12]))
    return snap


def cpu_delta(before: dict[int, tuple[int, int]],
              after: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(user, sys) ticks used between two snapshots by processes present in both
    (a process that ended, e.g. another user's PostgreSQL backend, cannot be
    accounted and would otherwise give negative numbers)."""
    user = system = 0
    for pid in before.keys() & after.keys():
        user += after[pid][0] - before[pid][0]
        system += after[pid][1] - before[pid][1]
    return user, system


def system_busy_seconds() -> float:
    """Busy CPU time of the whole machine (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def wait_quiet(max_wait: float = 20.0, threshold_cores: float = 0.3,
               window: float = 1.0) -> dict[str, float]:
    """Wait (bounded) until the machine is nearly idle: other people's jobs share these
    2 cores and would distort the figures. Returns how long it waited and the last
    busy reading (cores busy over `window` seconds)."""
    t0 = time.monotonic()
    while True:
        b0 = system_busy_seconds()
        time.sleep(window)
        cores = (system_busy_seconds() - b0) / window
        waited = time.monotonic() - t0
        if cores <= threshold_cores or waited >= max_wait:
            return {"waited_s": round(waited, 1), "busy_cores_before": round(cores, 2)}


def pids_by_comm(*names: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names:
            out.append(int(entry.name))
    return out


# --- wrk -------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _to_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise ValueError(f"unparsed latency {value!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    if m:
        res["requests"] = int(m.group(1))
        res["elapsed_ms"] = _to_ms(m.group(2))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.MULTILINE)
        res[f"p{pct}_ms"] = _to_ms(m.group(1)) if m else None
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        res["avg_ms"], res["max_ms"] = _to_ms(m.group(1)), _to_ms(m.group(3))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                    map(int, m.groups()), strict=True)) if m else {}
    return res


def run_wrk(url: str, script: Path, *, threads: int, connections: int, duration: int,
            cpu_groups: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run wrk (bounded by -d, plus a hard timeout) and measure CPU of process groups.

    cpu_groups maps a label to a callable returning the PIDs to account.
    """
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s",
           "--latency", "-s", str(script), url]
    groups = {k: f() for k, f in (cpu_groups or {}).items()}
    before = {k: cpu_snapshot(p) for k, p in groups.items()}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = system_busy_seconds()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    wall = time.monotonic() - t0
    res = parse_wrk(out)
    res["command"] = " ".join(cmd)
    res["raw"] = out
    after = {k: cpu_snapshot(list(before[k])) for k in groups}
    deltas = {k: cpu_delta(before[k], after[k]) for k in groups}
    cpu = {k: sum(d) / CLK_TCK for k, d in deltas.items()}
    res["cpu_user_sys_seconds"] = {k: [round(d[0] / CLK_TCK, 2), round(d[1] / CLK_TCK, 2)]
                                   for k, d in deltas.items()}
    # wrk's own CPU: the only child reaped during this call (gunicorn is still running).
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["wrk"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    busy = system_busy_seconds() - busy0
    if groups:
        # Everything else on the box (other users' tests, kernel softirq, ...): noise gauge.
        cpu["other"] = max(0.0, busy - sum(cpu.values()))
    res["machine_busy_fraction"] = round(busy / (wall * (os.cpu_count() or 1)), 3)
    res["cpu_seconds"] = {k: round(v, 2) for k, v in cpu.items()}
    res["cpu_seconds_total"] = round(sum(cpu.values()), 2)
    res["wall_seconds"] = round(wall, 2)
    n = res.get("requests") or 0
    if n:
        res["cpu_us_per_request"] = {k: round(v / n * 1e6) for k, v in cpu.items()}
    return res


def print_table(rows: list[list[Any]], header: list[str]) -> None:
    cols = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    for j, r in enumerate(cols):
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


@contextlib.contextmanager
def fresh_database(admin_url: str, prefix: str = "hf_bench") -> Iterator[str]:
    """A new PostgreSQL database, migrated to head, dropped afterwards (also on failure)."""
    import psycopg

    from shared.core.migrate import upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{base}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"dropped database {name}", flush=True)
