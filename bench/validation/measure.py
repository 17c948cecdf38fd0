"""The measurements: `procs` spawned processes (fresh, so peak RSS is per process),
each decoding + sanitizing the same bytes in a loop for a fixed time after one
warm-up image; and where sanitize spends its time, step by step."""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

import pillow_heif

from bench.common.procfs import status_kib, system_busy_seconds
from bench.common.stats import mean
from shared.images import sanitize as im

MAX_PIXELS = 40_000_000  # Settings.max_image_pixels default


def worker(path: str, content_type: str, seconds: float, heif_threads: int | None,
           start: Any, out: Any) -> None:
    if heif_threads is not None:
        pillow_heif.options.DECODE_THREADS = heif_threads
    data = Path(path).read_bytes()
    rss_ready_kb = status_kib("self", "VmRSS")
    info, image = im.inspect_and_decode(data, content_type, MAX_PIXELS)  # warm-up
    clean = im.sanitize(image)
    del image
    start.wait()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t_start = time.perf_counter()
    deadline = t_start + seconds
    n = 0
    t_decode = t_sanitize = 0.0
    while True:
        t0 = time.perf_counter()
        info, image = im.inspect_and_decode(data, content_type, MAX_PIXELS)
        t1 = time.perf_counter()
        clean = im.sanitize(image)
        t2 = time.perf_counter()
        del image
        n += 1
        t_decode += t1 - t0
        t_sanitize += t2 - t1
        if t2 >= deadline:
            break
    elapsed = time.perf_counter() - t_start
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    out.put({
        "images": n, "elapsed_s": elapsed,
        "decode_ms": t_decode / n * 1000, "sanitize_ms": t_sanitize / n * 1000,
        "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent.
        "peak_rss_mib": status_kib("self", "VmHWM") / 1024,
        "rss_before_first_image_mib": rss_ready_kb / 1024,
        "input_bytes": len(data), "output_bytes": len(clean.data),
        "decoded": f"{info.format} {info.width}x{info.height}",
        "output": f"{clean.width}x{clean.height}",
    })


def measure(path: Path, content_type: str, procs: int, seconds: float,
            heif_threads: int | None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(procs + 1)  # the parent too, to time the same window
    out = ctx.Queue()
    ps = [ctx.Process(target=worker, args=(str(path), content_type, seconds, heif_threads,
                                           start, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    start.wait(timeout=120)
    busy0, t0 = system_busy_seconds(), time.monotonic()
    results = [out.get(timeout=seconds + 120) for _ in ps]
    busy, wall_all = system_busy_seconds() - busy0, time.monotonic() - t0
    for p in ps:
        p.join(timeout=30)
    images = sum(r["images"] for r in results)
    wall = max(r["elapsed_s"] for r in results)
    return {
        "procs": procs, "heif_decode_threads": heif_threads if heif_threads is not None else "default",
        "images": images, "images_per_s": round(images / wall, 2),
        "ms_per_image_per_process": round(mean([r["elapsed_s"] / r["images"] * 1000
                                                for r in results]), 1),
        "decode_ms": round(mean([r["decode_ms"] for r in results]), 1),
        "sanitize_ms": round(mean([r["sanitize_ms"] for r in results]), 1),
        "cores_used_per_process": round(mean([r["cpu_s"] / r["elapsed_s"] for r in results]), 2),
        "peak_rss_mib_per_process": [round(r["peak_rss_mib"], 1) for r in results],
        "rss_before_first_image_mib": round(results[0]["rss_before_first_image_mib"], 1),
        "input_mib": round(results[0]["input_bytes"] / 1024 / 1024, 2),
        "output_mib": round(results[0]["output_bytes"] / 1024 / 1024, 2),
        "decoded": results[0]["decoded"], "output": results[0]["output"],
        # CPU of everything else on the machine while this ran (other users' jobs): noise gauge.
        "other_cores_busy": round(max(0.0, busy - sum(r["cpu_s"] for r in results)) / wall_all, 2),
    }


def sanitize_steps(path: Path, content_type: str, reps: int = 5) -> dict[str, float]:
    """Where sanitize spends its time (in this process, after the timed runs)."""
    data = path.read_bytes()
    steps: dict[str, float] = {}
    for _ in range(reps):
        _, image = im.inspect_and_decode(data, content_type, MAX_PIXELS)
        t = time.perf_counter()
        upright = im.apply_orientation(image)
        t1 = time.perf_counter()
        normalised = im._normalise_mode(upright)
        srgb = im._to_srgb(normalised, upright.info.get("icc_profile"))
        t2 = time.perf_counter()
        rgb = im._flatten_alpha(srgb)
        clean = im._pixels_only(rgb)
        t3 = time.perf_counter()
        data_out = im._encode_jpeg(clean, 90)
        t4 = time.perf_counter()
        im.hashlib.sha256(data_out).hexdigest()
        t5 = time.perf_counter()
        for k, v in (("orientation", t1 - t), ("mode + ICC to sRGB", t2 - t1),
                     ("flatten + copy pixels", t3 - t2), ("JPEG encode q90", t4 - t3),
                     ("sha256", t5 - t4)):
            steps[k] = min(steps.get(k, float("inf")), v * 1000)  # min: robust to noise
        del image, upright, normalised, srgb, rgb, clean
    return {k: round(v, 1) for k, v in steps.items()}
