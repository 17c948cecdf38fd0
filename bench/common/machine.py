"""The machine and the code a benchmark ran on."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common.paths import REPO_ROOT

PACKAGES = ("flask", "werkzeug", "flask-smorest", "marshmallow", "gunicorn", "sqlalchemy",
            "psycopg", "redis", "limits", "boto3", "botocore", "pyjwt", "pillow",
            "pillow-heif", "numpy", "pyinstrument")


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _first_field(path: str, prefix: str) -> str:
    for line in Path(path).read_text().splitlines():
        if line.startswith(prefix):
            return line.split(":", 1)[1].strip()
    return ""


def machine_info() -> dict[str, Any]:
    mem_kb = int(_first_field("/proc/meminfo", "MemTotal:").split()[0] or 0)
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": _first_field("/proc/cpuinfo", "model name"),
        "mem_total_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": package_versions(PACKAGES),
        "loadavg_at_start": loadavg(),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (f"machine: {info['nproc']} x {info['cpu_model']}, {info['mem_total_gib']} GiB, "
            f"kernel {info['kernel']}, Python {info['python']}, load {info['loadavg_at_start']}")


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
