"""`python -m devstack.fal_emulator --state-dir DIR [...]`: the emulator as a process of its own.

Once it serves, it writes its pid, port, URLs and CA paths to <state dir>/emulator.json
(what start_emulator_process waits for); SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from devstack.fal_emulator.config import JOB_FAULTS, SUBMIT_FAULTS, WEBHOOK_MODES
from devstack.fal_emulator.emulator import FalEmulator
from devstack.fal_emulator.process import INFO_FILE
from devstack.procs import on_stop_signals


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.fal_emulator",
                                     description="Offline fal.ai queue emulator (HTTPS, local CA).")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state-dir", type=Path, required=True, help="CA, keys, media, emulator.json")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds a job spends IN_PROGRESS")
    parser.add_argument("--queue-seconds", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4, help="threads running the emulated model")
    parser.add_argument("--submit-faults", default="",
                        help=f"comma-separated, from {','.join(SUBMIT_FAULTS)}")
    parser.add_argument("--job-faults", default="", help=f"comma-separated, from {','.join(JOB_FAULTS)}")
    parser.add_argument("--webhook-mode", default="normal", choices=WEBHOOK_MODES)
    parser.add_argument("--config", default="", help="JSON object of further knobs")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    if not args.verbose:  # one line per download and webhook otherwise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    knobs: dict[str, Any] = {"latency_seconds": args.latency, "queue_seconds": args.queue_seconds,
                             "max_concurrency": args.max_concurrency, "submit_faults": args.submit_faults,
                             "job_faults": args.job_faults, "webhook_mode": args.webhook_mode}
    if args.config:
        knobs.update(json.loads(args.config))
    emulator = FalEmulator(args.state_dir, args.port, host=args.host, workers=args.workers,
                           verbose=args.verbose, **knobs)
    emulator.start()

    def on_signal(signum: int, frame: Any) -> None:
        threading.Thread(target=emulator.stop, daemon=True).start()

    on_stop_signals(on_signal)
    info = {"pid": os.getpid(), "port": emulator.port, "base_url": emulator.base_url,
            "queue_url_format": emulator.queue_url_format, "jwks_url": emulator.jwks_url,
            "ca_path": str(emulator.ca_path), "ca_bundle_path": str(emulator.ca_bundle_path)}
    info_path = args.state_dir / INFO_FILE
    tmp = info_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, info_path)
    print(f"fal emulator listening on port {emulator.port}", flush=True)
    print(f"  queue URL: {emulator.queue_url_format}   CA: {emulator.ca_path}", flush=True)
    print(f"  CA bundle (system roots + CA): {emulator.ca_bundle_path}", flush=True)
    print(f"  client env: {' '.join(f'{k}={v}' for k, v in emulator.client_env().items())}", flush=True)
    emulator.serve_forever()
    info_path.unlink(missing_ok=True)
    print("fal emulator stopped", flush=True)
    return 0

