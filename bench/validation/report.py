"""What the validation benchmark prints: one line per measurement as it ends, then
the tables (throughput, 1 -> 2 process scaling, sanitize steps)."""

from __future__ import annotations

import sys
from typing import Any

from bench.common.report import print_table


def print_run(r: dict[str, Any]) -> None:
    print(f"{r['variant']:11} procs={r['procs']} heif_threads={r['heif_decode_threads']!s:7} "
          f"{r['images_per_s']:6.2f} img/s  {r['ms_per_image_per_process']:6.0f} ms/img "
          f"(decode {r['decode_ms']:.0f} + sanitize {r['sanitize_ms']:.0f})  "
          f"cores/proc {r['cores_used_per_process']:.2f}  peak RSS "
          f"{r['peak_rss_mib_per_process']} MiB  other load {r['other_cores_busy']:.2f} cores"
          f"  (attempt {r['attempts']})")
    sys.stdout.flush()


def scaling(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up of every multi-process run over the 1-process run of its variant."""
    base = {(r["variant"], r["heif_decode_threads"]): r for r in runs if r["procs"] == 1}
    out = []
    for r in runs:
        b = base.get((r["variant"], r["heif_decode_threads"]))
        if r["procs"] > 1 and b:
            out.append({"variant": r["variant"], "heif_decode_threads": r["heif_decode_threads"],
                        "procs": r["procs"], "speedup": round(r["images_per_s"] / b["images_per_s"], 2)})
    return out


def print_tables(runs: list[dict[str, Any]], speedups: list[dict[str, Any]],
                 steps: dict[str, dict[str, float]], seconds: float) -> None:
    print(f"\n12 MP selfie: inspect_and_decode + sanitize ({seconds:.0f} s per row, "
          f"spawned processes)")
    print_table([[r["variant"], f"{r['input_mib']:.1f}", r["heif_decode_threads"], r["procs"],
                  f"{r['images_per_s']:.2f}", f"{r['ms_per_image_per_process']:.0f}",
                  f"{r['decode_ms']:.0f}", f"{r['sanitize_ms']:.0f}",
                  f"{r['cores_used_per_process']:.2f}", max(r["peak_rss_mib_per_process"]),
                  f"{r['other_cores_busy']:.2f}"]
                 for r in runs],
                ["variant", "in MiB", "heif thr", "procs", "img/s", "ms/img", "decode",
                 "sanitize", "cores/proc", "peak RSS MiB", "other load"])
    print("\nscaling 1 -> 2 processes")
    print_table([[s["variant"], s["heif_decode_threads"], f"x{s['speedup']:.2f}"] for s in speedups],
                ["variant", "heif thr", "speedup"])
    print("\nsanitize steps, ms (in this process, best of 5)")
    names = list(next(iter(steps.values())))
    print_table([[v, *[f"{steps[v][k]:.0f}" for k in names]] for v in steps], ["variant", *names])
