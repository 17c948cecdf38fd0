"""What the stack's logs say went wrong: per log file, the lines at ERROR/CRITICAL
level or with a traceback, the WARNING lines, gunicorn's 5xx answers, and the first
few distinct error lines (query strings cut: no signed URL leaves a log this way)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_ERROR = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b|\[E \d")
_WARNING = re.compile(r"\bWARN(ING)?\b|\[W \d")
_ACCESS_5XX = re.compile(r'"(GET|POST|PUT|DELETE|HEAD) \S+" 5\d\d ')
_QUERY = re.compile(r"\?\S*")
# Known and harmless at start-up: Celery's notice about running as root.
_IGNORED = ("SecurityWarning", "superuser privileges", "_warn_or_raise_security_error")
EXAMPLES = 5


def scan_file(path: Path) -> dict[str, Any]:
    errors = warnings = server_errors = 0
    examples: list[str] = []
    warning_examples: list[str] = []
    with path.open("rb") as f:
        for raw in f:
            line = raw.decode(errors="replace").rstrip()
            if any(marker in line for marker in _IGNORED):
                continue
            if _ACCESS_5XX.search(line):
                server_errors += 1
            text = _QUERY.sub("?…", line)[:240]
            if _ERROR.search(line):
                errors += 1
                if len(examples) < EXAMPLES and text not in examples:
                    examples.append(text)
            elif _WARNING.search(line):
                warnings += 1
                if len(warning_examples) < EXAMPLES and text not in warning_examples:
                    warning_examples.append(text)
    return {"error_lines": errors, "warning_lines": warnings, "http_5xx": server_errors,
            "examples": examples, "warning_examples": warning_examples}


def scan_logs(logs: Path) -> dict[str, Any]:
    files = {p.name: scan_file(p) for p in sorted(logs.glob("*.log"))}
    summary = {name: {k: v for k, v in f.items() if not k.endswith("examples") and v}
               for name, f in files.items()}
    return {"files": files, "summary": {k: v for k, v in summary.items() if v} or "none"}
