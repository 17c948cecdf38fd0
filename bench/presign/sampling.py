"""Time by library: a wall-clock sampler and pyinstrument's call tree
(bench/results/presign-pyinstrument.txt)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

from bench.common.paths import REPO_ROOT, RESULTS_DIR
from bench.presign.request import WsgiCaller


def library_of(path: str | None) -> str:
    if not path or path.startswith("<"):
        return "stdlib"
    p = path.replace("\\", "/")
    if "/site-packages/" in p:
        return p.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    root = str(REPO_ROOT) + "/"
    if p.startswith(root + "bench/"):
        return "bench harness"
    if p.startswith(root):
        return "app code (" + p[len(root):] + ")"
    return "stdlib"


def sampling_profile(caller: WsgiCaller, n: int, interval: float = 0.0005) -> dict[str, Any]:
    """Wall-clock sampler (SIGALRM every `interval`): each sample goes to the innermost
    non-stdlib frame's library, so socket waits count for redis / psycopg and json or
    hmac calls for whoever made them. Overhead is per sample, not per call (unlike
    pyinstrument/cProfile, which inflate call-heavy code such as SQLAlchemy)."""
    counts: Counter[str] = Counter()

    def handler(_signum: int, frame: Any) -> None:
        lib = "stdlib"
        f = frame
        while f is not None:
            lib = library_of(f.f_code.co_filename)
            if lib != "stdlib":
                break
            f = f.f_back
        counts[lib] += 1

    old = signal.signal(signal.SIGALRM, handler)
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        for _ in range(n):
            caller()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    wall_us = (time.perf_counter() - t0) / n * 1e6
    total = sum(counts.values())
    return {"n": n, "interval_ms": interval * 1000, "samples": total,
            "wall_us_per_request": round(wall_us, 1),
            "by_library_us": {k: round(v / total * wall_us, 1) for k, v in counts.most_common()},
            "by_library_share": {k: round(v / total, 3) for k, v in counts.most_common()}}


def pyinstrument_profile(caller: WsgiCaller, n: int) -> dict[str, Any]:
    try:  # optional: the rest of the benchmark works without it
        from pyinstrument import Profiler
    except ImportError:
        return {"skipped": "pyinstrument not installed (.venv/bin/pip install pyinstrument)"}
    profiler = Profiler(interval=0.0001)
    profiler.start()
    for _ in range(n):
        caller()
    session = profiler.stop()
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    out = RESULTS_DIR / "presign-pyinstrument.txt"
    out.write_text(text)
    # Self time grouped by library; C calls (socket recv, hmac) count for their caller's library.
    by_lib: Counter[str] = Counter()

    def lib_of(path: str | None) -> str | None:
        lib = library_of(path)
        return None if lib == "stdlib" and (not path or path.startswith("<")) else lib

    def walk(frame: Any, inherited: str) -> None:
        lib = lib_of(frame.file_path) or inherited
        child_time = sum(c.time for c in frame.children)
        by_lib[lib] += max(0.0, frame.time - child_time)
        for c in frame.children:
            walk(c, lib)

    root = session.root_frame()
    if root is not None:
        walk(root, "?")
    total = sum(by_lib.values())
    per_req = {k: round(v / n * 1e6, 1) for k, v in by_lib.most_common() if v / total > 0.005}
    return {"n": n, "self_time_by_library_us": per_req,
            "total_us_per_request": round(total / n * 1e6, 1),
            "report_file": str(out.relative_to(REPO_ROOT))}
