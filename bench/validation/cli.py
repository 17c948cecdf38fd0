"""Command line and main of bench/validation_bench.py."""

from __future__ import annotations

import argparse
import time
from typing import Any

import pillow_heif

from bench.common.machine import git_revision, machine_info, machine_line
from bench.common.paths import REPO_ROOT
from bench.common.quiet import add_quiet_options, quietest, wait_quiet
from bench.common.report import write_result
from bench.validation.images import CONTENT_TYPES, SIZE, build_images
from bench.validation.measure import MAX_PIXELS, measure, sanitize_steps
from bench.validation.report import print_run, print_tables, scaling


def parse_args(description: str | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed loop per measurement")
    ap.add_argument("--variants", type=lambda v: v.split(","), default=list(CONTENT_TYPES))
    ap.add_argument("--procs", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    ap.add_argument("--heif-single-thread", action="store_true",
                    help="also run HEIC with pillow-heif DECODE_THREADS=1")
    ap.add_argument("--regen", action="store_true", help="rebuild the test images")
    add_quiet_options(ap, attempts=3, what="measurement", retried="measurement")
    return ap.parse_args()


def main(description: str | None = None) -> None:
    args = parse_args(description)
    started = time.monotonic()
    info = machine_info()
    print(machine_line(info))
    paths = build_images(args.regen)
    runs: list[dict[str, Any]] = []
    for name in args.variants:
        configs: list[int | None] = [None]
        if name.startswith("heic") and args.heif_single_thread:
            configs.append(1)
        for threads in configs:
            for procs in args.procs:
                r = quietest(lambda name=name, procs=procs, threads=threads: measure(
                    paths[name], CONTENT_TYPES[name], procs, args.seconds, threads),
                    "other_cores_busy", args)
                r["variant"] = name
                runs.append(r)
                print_run(r)
    steps = {}
    for name in args.variants:
        wait_quiet(args.max_quiet_wait)
        steps[name] = sanitize_steps(paths[name], CONTENT_TYPES[name])
    speedups = scaling(runs)
    print_tables(runs, speedups, steps, args.seconds)

    result = {"benchmark": "validation", "machine": info, "git": git_revision(),
              "args": vars(args), "image_size": SIZE, "max_pixels": MAX_PIXELS,
              "pillow_heif_default_decode_threads": pillow_heif.options.DECODE_THREADS,
              "runs": runs, "scaling": speedups, "sanitize_steps_ms": steps,
              "elapsed_s": round(time.monotonic() - started, 1)}
    path = write_result("validation", result)
    print(f"\nwrote {path.relative_to(REPO_ROOT)} ({result['elapsed_s']} s)")
