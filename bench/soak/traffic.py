"""The load generator: a second process (`python -m bench.soak.traffic PLAN.json`) on
loopback. Starts one user session (bench/soak/flow.py) every 1/rate seconds, at most
`max_in_flight` at once (a start that finds them all busy is counted as skipped, not
queued: the load stays steady and a slow stack shows up as skips). Bounded in time
(no new session after `duration` s, no request after `duration + drain` s) and in
count (no request after `max_requests`). Writes one JSON line per request and per
flow outcome to the plan's `records` file, the first line being the start time, and
a summary to its `summary` file."""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.soak.flow import Limits, Recorder, Session


class _Clients(threading.local):
    """One API and one S3 client per session thread (keep-alive where the server allows)."""

    def __init__(self, base: str, timeout: float) -> None:
        self.api = httpx.Client(base_url=base, timeout=timeout)
        self.s3 = httpx.Client(timeout=timeout)


def _hairstyles(base: str, token: str, rec: Recorder, timeout: float) -> list[str]:
    """The catalogue's ids, as the app reads them before offering styles."""
    wall, t0 = time.time(), time.perf_counter()
    r = httpx.get(f"{base}/v1/hairstyles", headers={"Authorization": f"Bearer {token}"},
                  timeout=timeout)
    rec.request("hairstyles", r.status_code, wall, time.perf_counter() - t0)
    r.raise_for_status()
    return [item["id"] for item in r.json()["items"]]


def run(plan: dict[str, Any]) -> dict[str, Any]:
    t0 = time.time()
    Path(plan["records"]).write_text(json.dumps({"start": t0}) + "\n")
    rec = Recorder(plan["records"], t0, plan["max_requests"])
    tokens: list[str] = plan["tokens"]
    limits = Limits(upload_ready_s=plan["upload_ready_s"], tryon_done_s=plan["tryon_done_s"],
                    stop_at=t0 + plan["duration"] + plan["drain"])
    styles = _hairstyles(plan["base"], tokens[0], rec, plan["request_timeout_s"])
    selfie = Path(plan["selfie"]).read_bytes()
    clients = _Clients(plan["base"], plan["request_timeout_s"])
    in_flight = threading.BoundedSemaphore(plan["max_in_flight"])
    ends: dict[str, int] = {}
    lock = threading.Lock()
    per = plan["tryons_per_session"]

    def session(n: int) -> None:
        try:
            picked = [styles[(n * per + k) % len(styles)] for k in range(per)]
            end = Session(clients.api, clients.s3, rec, limits, tokens[n % len(tokens)],
                          selfie, picked, f"{plan['tag']}-{n}").run()
        except Exception as exc:  # noqa: BLE001 - a bug in a session must not end the run
            end = f"crashed: {exc!r}"
        finally:
            in_flight.release()
        with lock:
            ends[end] = ends.get(end, 0) + 1

    started = skipped = 0
    interval = 1.0 / plan["rate"]
    last_start = t0 + plan["duration"]
    pool = ThreadPoolExecutor(max_workers=plan["max_in_flight"], thread_name_prefix="session")
    next_start = t0
    while next_start < last_start and rec.budget_left():
        time.sleep(max(0.0, next_start - time.time()))
        if in_flight.acquire(blocking=False):
            pool.submit(session, started + skipped)
            started += 1
        else:
            skipped += 1
        next_start += interval
    # No new session; those in flight end by themselves (every poll is bounded, and no
    # request is made after stop_at), so this wait is bounded too.
    pool.shutdown(wait=True)
    rec.close()
    return {"start": t0, "end": time.time(), "sessions_started": started,
            "sessions_skipped_all_busy": skipped, "session_ends": ends,
            "requests": rec.requests, "request_bound_reached": not rec.budget_left(),
            "styles": styles}


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text())
    summary = run(plan)
    Path(plan["summary"]).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
