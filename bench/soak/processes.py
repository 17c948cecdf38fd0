"""The stack's processes, found by walking the descendants of this process (the dev
stack runs in it, so every server it starts is a child of ours): however many Celery
pools or servers the dev stack's layout has, they are all here. Each is named after
the process that was started (the group) and its place under it (main or child),
and measured from /proc: PSS (smaps_rollup) and CPU ticks."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from bench.common.procfs import cpu_snapshot, descendants, pss_kib

# Processes that stand in for hosted services (S3, fal) or are infrastructure we do
# not write (Redis): measured and shown, but not held to the application's bound.
STAND_IN_MARKERS = ("localstack", "moto", "fal_emulator", "redis-server", "fakeredis")


@dataclass(frozen=True)
class Proc:
    pid: int
    group: str  # the started process's name, e.g. "celery worker -Q uploads -c 2"
    role: str  # "main" (the started process) or "child" (a pool process, a gunicorn worker)

    @property
    def stand_in(self) -> bool:
        return any(marker in self.group for marker in STAND_IN_MARKERS)


def _argv(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return [a.decode(errors="replace") for a in
                Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    return []


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def listener_names(env: dict[str, str]) -> dict[str, str]:
    """port -> what the dev stack serves there, from the URLs it hands out: the API,
    and the listener fal's webhooks go to when it is another one."""
    names = {}
    for var, name in (("PUBLIC_BASE_URL", "fal webhooks"), ("HF_BASE_URL", "API")):
        port = env.get(var, "").rstrip("/").rsplit(":", 1)[-1]
        if port.isdigit():
            names[port] = name
    return names


def process_name(argv: list[str], listeners: dict[str, str] | None = None) -> str:
    """A short, stable name from a command line: `celery worker -Q <queues> -P <pool>
    -c <n>`, `celery beat`, `gunicorn api.wsgi:app (API)` (what its port serves, from
    `listeners`: ports are random), `python -m <module>` as the module, else the
    program's name."""
    if not argv:
        return "?"
    prog = [Path(a).name for a in argv[:2]]
    if "celery" in prog:
        rest = argv[prog.index("celery") + 1:]
        sub = next((a for a in rest if a in ("worker", "beat", "flower")), "?")
        name = f"celery {sub}"
        if sub == "worker":
            for flag, names in (("-Q", ("-Q", "--queues")), ("-P", ("-P", "--pool")),
                                ("-c", ("-c", "--concurrency"))):
                value = _option(rest, *names)
                if value:
                    name += f" {flag} {value}"
        return name
    if "gunicorn" in prog:
        bind = _option(argv, "-b", "--bind") or ""
        port = bind.rsplit(":", 1)[-1]
        serves = (listeners or {}).get(port, f"-b {bind}" if bind else "")
        return " ".join(["gunicorn", argv[-1] if ":" in argv[-1] else "",
                         f"({serves})" if serves else ""]).replace("  ", " ").strip()
    if "-m" in argv:
        return argv[argv.index("-m") + 1]
    # Some servers rewrite their command line into one string (redis-server's "host:port").
    return Path(argv[0].split()[0]).name


def stack_processes(exclude: set[int], listeners: dict[str, str] | None = None) -> list[Proc]:
    """Every live descendant of this process except itself and `exclude` (and their
    descendants, e.g. the load generator), named by the direct child it runs under."""
    me = os.getpid()
    procs: list[Proc] = []
    for top in _children(me):
        if top in exclude:
            continue
        group = process_name(_argv(top), listeners)
        for pid in descendants(top):
            if pid in exclude:
                continue
            procs.append(Proc(pid, group, "main" if pid == top else "child"))
    return procs


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def pss_sample(procs: list[Proc]) -> list[dict[str, object]]:
    """One PSS reading per live process: [{pid, group, role, stand_in, pss_kib}]."""
    rows: list[dict[str, object]] = []
    for p in procs:
        kib = pss_kib(p.pid)
        if kib:  # 0: the process ended since it was listed
            rows.append({"pid": p.pid, "group": p.group, "role": p.role,
                         "stand_in": p.stand_in, "pss_kib": kib})
    return rows


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """pid -> user + system clock ticks so far."""
    return {pid: u + s for pid, (u, s) in cpu_snapshot(pids).items()}
