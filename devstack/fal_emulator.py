"""An offline fal.ai queue emulator that the unmodified `fal_client.SyncClient` talks to.

What it serves (HTTPS on 127.0.0.1, one port, certificate from a local trustme CA):

- the queue API for any app id (`fal-ai/nano-banana/edit`, ...): `POST /{app}[?fal_webhook=URL]`,
  `GET /{owner}/{alias}/requests/{id}/status`, `GET /{owner}/{alias}/requests/{id}`,
  `PUT /{owner}/{alias}/requests/{id}/cancel` (`Authorization: Key <non-empty>` required);
- a media host, `GET /media/{file}`, serving the result images (no auth, like fal's CDN);
- `GET /.well-known/jwks.json`: the Ed25519 key the webhooks are signed with;
- control endpoints: `GET|POST /_emulator/config`, `GET /_emulator/stats[?requests=0]`,
  `POST /_emulator/reset` (body `{"config": true}` also restores the start-up knobs),
  `GET /_emulator/health`.

The emulated model really works: when a job runs it downloads `image_urls[0]` with httpx (so
an expired or tampered presigned URL fails as on fal, with a 422 `file_download_error`),
decodes it with Pillow and returns a visibly edited copy (the top third - the hair - tinted
with a colour derived from the prompt, plus a small label) on the media host.

Configuring a client (verified by tests/integration/test_fal_emulator.py with fal-client 1.0.3
and httpx 0.28):

- trust: `SSL_CERT_FILE=<state>/ca.pem` (only the emulator's CA) or, for processes that also
  talk to real HTTPS services, `SSL_CERT_FILE=<state>/ca-bundle.pem` (certifi's roots plus
  the emulator's CA). httpx reads the variable when an `httpx.Client` is *built*;
  `SyncClient` builds its client lazily on first use (a cached property), so set the
  variable before the first request made through that SyncClient instance.
- address, either of:
  * in-process: `fal_client.client.QUEUE_URL_FORMAT = emulator.queue_url_format`
    (`https://127.0.0.1:PORT/`); a module global read at call time by submit/status/
    result/cancel - works with the real client, no restart needed;
  * for a fresh process: `FAL_QUEUE_RUN_HOST=127.0.0.1:PORT` in its environment (fal-client
    reads it once, at import). `FalEmulator.client_env()` returns these variables.
- any non-empty key: `SyncClient(key="test")` or `FAL_KEY=test`.

Note that `SyncClient.result()` polls status until COMPLETED before fetching the result, so
it blocks forever on a job that never completes (see the `never_complete` fault).

Knobs (constructor keywords, CLI flags, `configure(**knobs)`, `POST /_emulator/config`):

- `latency_seconds` (time IN_PROGRESS), `queue_seconds` (minimum time IN_QUEUE),
  `max_concurrency` (jobs IN_PROGRESS at once; 0 = unlimited, others wait IN_QUEUE with a
  real `queue_position`), `honour_cancel` (the emulated app stops when cancelled in progress),
  `download_timeout`, `user_id` (sent in `X-Fal-Webhook-User-Id`);
- `submit_faults`: list, one taken per submit (POST), see SUBMIT_FAULTS;
- `job_faults`: list, one taken per accepted submit and applied when that job completes,
  see JOB_FAULTS (taken at submit so that "the next job" is well defined);
- `webhook_mode`: "normal" | "duplicate" | "late" | "none" | "early" ("early": the job is
  processed inside the submit call and its webhook delivered before the submit response is
  sent, i.e. before the caller knows the request_id); `webhook_late_seconds`;
  `webhook_retry_delays` (a non-2xx or failed delivery is retried after each delay in turn);
  `webhook_on_cancel` (deliver an ERROR webhook for cancelled requests; default off - fal's
  behaviour there is unconfirmed);
- `submit_delay_seconds` (hold a submit's response this long after the job was enqueued: fal
  has accepted it, the caller does not know yet) and `media_delay_seconds` (hold media
  downloads): windows for the fault suite to kill a worker in; `webhook_duplicate_seconds`
  (the delay of "duplicate" mode's second delivery, default 0.2 s).

Per request, `stats()` reports the webhook URL and start timeout it was submitted with, and
the retention asked for. Like fal, the emulator honours `X-Fal-Object-Lifecycle-Preference`
(`{"expiration_duration_seconds": N}`: the request's media files are deleted N seconds after
it completed, then 404) and `X-Fal-Store-IO: 0` (the payload is dropped once it completed);
a result answers 404 `result_retention_seconds` (default 3600) after completion.

Choices where fal's exact behaviour is not documented (the emulator's, not fal's): a
cancelled request reports COMPLETED with `error_type` "request_cancelled" and its result is
400; a request whose `X-Fal-Request-Timeout` (start_timeout) passes while IN_QUEUE completes
with `request_timeout` (result 504 with `X-Fal-Request-Timeout-Type: user`); status/result
URLs that include the endpoint path (`.../nano-banana/edit/requests/...`) are 404; model
errors echo the offending input in `detail[].input` as pydantic-style errors do - a
presigned URL included, so never log them verbatim.

Jobs move through a single scheduler thread (a heap of timers) and a small worker pool, so
thousands of requests can be in flight without a thread each.
"""

from __future__ import annotations

import argparse
import base64
import colorsys
import contextlib
import copy
import hashlib
import heapq
import io
import itertools
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from devstack.procs import ManagedProcess, wait_until

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_USER_ID = "fal-emulator-user"
INFO_FILE = "emulator.json"
START_TIMEOUT = 30.0

SUBMIT_FAULTS = (
    "429",  # rate limited; fal-client retries it itself (RETRY_CODES)
    "500_internal",  # 500, X-Fal-Error-Type: internal_error
    "503_runner",  # 503, runner_scheduling_failure
    "504_startup",  # 504, startup_timeout
    "504_request_timeout",  # 504, request_timeout + X-Fal-Request-Timeout-Type: user
    "400",
    "401",
    "403",  # "User is locked. Reason: Exhausted balance."
    "404",
    "422_content_policy",  # model-style {"detail": [{loc, msg, type}]}
    "malformed",  # 200 with a non-JSON body
    "retryable_header",  # 503 runner_disconnected with X-Fal-Retryable: true
    "502_nginx",  # ingress error: HTML, no x-fal-request-id -> fal-client retries it
    "drop",  # connection closed without a response, nothing enqueued
    "drop_after_enqueue",  # job enqueued, then the connection closed without a response
)
JOB_FAULTS = (
    "content_policy",  # 422 content_policy_violation
    "no_media",  # 422 no_media_generated
    "error_internal",  # 500 internal_error
    "malformed_result",  # 200 JSON that does not match the output schema (image without url)
    "garbage_result",  # 200 non-JSON body (webhook: payload null + payload_error)
    "never_complete",  # stays IN_PROGRESS until cancelled
)
WEBHOOK_MODES = ("normal", "duplicate", "late", "none", "early")

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"

_MEDIA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_REQUEST_PATH = re.compile(r"^/(?P<base>.+?)/requests/(?P<id>[^/]+)(?P<tail>/status|/cancel)?/?$")
_APP_NAMESPACES = ("workflows", "comfy")
_NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
CONTENT_POLICY_MSG = ("The content could not be processed because it contained material flagged by a "
                      "content checker.")
_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


# --------------------------------------------------------------------------- configuration


@dataclass
class EmulatorConfig:
    """Every runtime knob; see the module docstring."""

    latency_seconds: float = 1.0
    queue_seconds: float = 0.0
    max_concurrency: int = 0
    honour_cancel: bool = True
    download_timeout: float = 10.0
    user_id: str = DEFAULT_USER_ID
    submit_faults: list[str] = field(default_factory=list)
    job_faults: list[str] = field(default_factory=list)
    webhook_mode: str = "normal"
    webhook_late_seconds: float = 3.0
    webhook_retry_delays: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    webhook_on_cancel: bool = False
    # Fault-suite timing knobs: hold the submit response this long after the job was
    # enqueued (fal accepted it, the caller does not know yet), and media downloads.
    submit_delay_seconds: float = 0.0
    media_delay_seconds: float = 0.0
    # "duplicate" mode: the second delivery this long after the first (a long delay
    # makes it arrive late and out of order, after later attempts of the same job).
    webhook_duplicate_seconds: float = 0.2
    # Like fal: a finished request's result is kept this long, then answers 404.
    result_retention_seconds: float = 3600.0

    def update(self, knobs: Mapping[str, Any]) -> None:
        """Validate and apply `knobs`; nothing changes when one of them is invalid."""
        candidate = copy.deepcopy(self)
        names = set(self.__dataclass_fields__)
        for key, value in knobs.items():
            if key not in names:
                raise ValueError(f"unknown knob {key!r}; known: {sorted(names)}")
            setattr(candidate, key, _coerce(key, value))
        unknown = [f for f in candidate.submit_faults if f not in SUBMIT_FAULTS]
        if unknown:
            raise ValueError(f"unknown submit_faults {unknown}; known: {list(SUBMIT_FAULTS)}")
        unknown = [f for f in candidate.job_faults if f not in JOB_FAULTS]
        if unknown:
            raise ValueError(f"unknown job_faults {unknown}; known: {list(JOB_FAULTS)}")
        if candidate.webhook_mode not in WEBHOOK_MODES:
            raise ValueError(f"unknown webhook_mode {candidate.webhook_mode!r}; known: {list(WEBHOOK_MODES)}")
        for key, value in vars(candidate).items():
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return copy.deepcopy(vars(self))


def _coerce(key: str, value: Any) -> Any:
    if key in ("submit_faults", "job_faults"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return [str(v) for v in value]
    if key == "webhook_retry_delays":
        return [float(v) for v in value]
    if key in ("latency_seconds", "queue_seconds", "download_timeout", "webhook_late_seconds",
               "submit_delay_seconds", "media_delay_seconds", "webhook_duplicate_seconds",
               "result_retention_seconds"):
        number = float(value)
        if number < 0:
            raise ValueError(f"{key} must be >= 0")
        return number
    if key == "max_concurrency":
        return max(0, int(value or 0))
    if key in ("honour_cancel", "webhook_on_cancel"):
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        return bool(value)
    return str(value)


# --------------------------------------------------------------------------- jobs


@dataclass
class _Outcome:
    """What the emulated model produced: the result response and the webhook's view of it."""

    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    webhook_status: str = "OK"
    webhook_error: str | None = None
    payload: Any = None
    payload_error: str | None = None


@dataclass
class _Job:
    request_id: str
    app: str
    base: str  # "{namespace/}owner/alias", the prefix of its status/result/cancel URLs
    arguments: Any
    webhook_url: str | None
    fault: str | None
    latency: float
    webhook_mode: str
    honour_cancel: bool
    download_timeout: float
    submitted_at: float
    seq: int
    priority: str | None = None
    # Retention asked for (fal's per-request headers): media lifetime, payload storage.
    media_expiration_seconds: float | None = None
    store_io: bool = True
    media_files: list[str] = field(default_factory=list)
    media_expired: bool = False
    start_timeout: float | None = None
    start_deadline: float | None = None
    state: str = IN_QUEUE
    started_at: float | None = None
    completed_at: float | None = None
    holds_slot: bool = False
    cancel_requested: bool = False
    outcome: _Outcome | None = None
    status_calls: int = 0
    result_calls: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    def log(self, message: str) -> None:
        self.logs.append({"message": message, "level": "INFO", "source": "user",
                          "timestamp": _iso_now()})

    def info(self) -> dict[str, Any]:
        outcome = self.outcome
        return {
            "app": self.app,
            "status": self.state,
            "fault": self.fault,
            "cancel_requested": self.cancel_requested,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "result_status_code": outcome.status_code if outcome else None,
            "error_type": outcome.error_type if outcome else None,
            "status_calls": self.status_calls,
            "result_calls": self.result_calls,
            "webhook": bool(self.webhook_url),
            "webhook_url": self.webhook_url,
            "start_timeout": self.start_timeout,
            "media_expiration_seconds": self.media_expiration_seconds,
            "store_io": self.store_io,
            "payload_kept": self.arguments is not None,
            "media_expired": self.media_expired,
            "webhook_deliveries": list(self.deliveries),
        }


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() % 1 * 1e6):06d}"


def _split_app(path: str) -> tuple[str, str] | None:
    """(app id as submitted, "{namespace/}owner/alias") like fal_client's AppId; None if invalid."""
    parts = [p for p in path.strip("/").split("/") if p]
    if parts and parts[0] in _APP_NAMESPACES:
        if len(parts) < 3:
            return None
        return "/".join(parts), "/".join(parts[:3])
    if len(parts) < 2:
        return None
    return "/".join(parts), "/".join(parts[:2])


# --------------------------------------------------------------------------- scheduler


class _Scheduler:
    """One thread running short callbacks at given monotonic times."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fal-emulator-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), fn, args))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(timeout=(self._heap[0][0] - now) if self._heap else None)
                if self._stopped:
                    return
                _, _, fn, args = heapq.heappop(self._heap)
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one bad callback must not stop the clock
                log.exception("scheduled callback %s failed", fn)


# --------------------------------------------------------------------------- the model


_HAIR_COLOURS = {"blonde": (240, 214, 120), "blond": (240, 214, 120), "platinum": (229, 228, 226),
                 "brunette": (92, 58, 33), "ginger": (200, 90, 30), "auburn": (145, 40, 20),
                 "copper": (184, 100, 50), "pink": (255, 105, 180), "grey": (160, 160, 160)}


def _tint(prompt: str, variant: int) -> tuple[int, int, int]:
    """The first colour word of the prompt ("pink", "blonde", any CSS name), else a hash colour."""
    from PIL import ImageColor

    for word in re.findall(r"[a-z]+", prompt.lower()):
        rgb = _HAIR_COLOURS.get(word)
        if rgb is None and len(word) > 2:
            with contextlib.suppress(ValueError):
                rgb = ImageColor.getrgb(word)[:3]
        if rgb is not None:
            hue, sat, val = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
            red, green, blue = colorsys.hsv_to_rgb((hue + 0.08 * variant) % 1.0, sat, val)
            return int(red * 255), int(green * 255), int(blue * 255)
    digest = hashlib.sha256(f"{prompt}\0{variant}".encode()).digest()
    red, green, blue = colorsys.hsv_to_rgb(digest[0] / 255, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def edit_image(data: bytes, prompt: str, *, variant: int = 0, output_format: str = "jpeg",
               max_side: int = 1024) -> tuple[bytes, int, int]:
    """The emulated edit: the top third tinted by the prompt's colour, plus a label.

    Raises PIL.UnidentifiedImageError / OSError for undecodable input and
    PIL.Image.DecompressionBombError for absurdly large images.
    """
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    with Image.open(io.BytesIO(data)) as source:
        source.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced size when possible
        image = ImageOps.exif_transpose(source).convert("RGB")
    image.thumbnail((max_side, max_side))
    width, height = image.size
    tint = _tint(prompt, variant)
    band_box = (0, 0, width, max(1, height // 3))
    band = image.crop(band_box)
    image.paste(Image.blend(band, Image.new("RGB", band.size, tint), 0.6), band_box)
    draw = ImageDraw.Draw(image)
    try:
        font: Any = ImageFont.load_default(size=max(10, height // 40))
    except (OSError, ImportError):  # Pillow without FreeType
        font = ImageFont.load_default()
    label = f"fal-emulator: {prompt[:48]}"
    left, top, right, bottom = draw.textbbox((6, height - 6), label, font=font, anchor="lb")
    draw.rectangle((left - 4, top - 4, right + 4, bottom + 4), fill=(0, 0, 0))
    draw.text((6, height - 6), label, font=font, fill=tint, anchor="lb")
    out = io.BytesIO()
    pil_format = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[output_format]
    image.save(out, format=pil_format, **({"quality": 90} if pil_format != "PNG" else {}))
    return out.getvalue(), width, height


def _model_error(status: int, loc: list[Any], msg: str, err_type: str, *, input_value: Any = None,
                 retryable: bool | None = None) -> _Outcome:
    item: dict[str, Any] = {"loc": loc, "msg": msg, "type": err_type,
                            "url": f"https://docs.fal.ai/errors#{err_type}"}
    if input_value is not None:
        item["input"] = input_value
    body = {"detail": [item]}
    headers = {} if retryable is None else {"X-Fal-Retryable": "true" if retryable else "false"}
    return _Outcome(status, _json(body), headers, error=msg, error_type=err_type, webhook_status="ERROR",
                    webhook_error=f"Invalid status code: {status}", payload=body)


def _infra_error(status: int, detail: str, err_type: str,
                 extra_headers: Mapping[str, str] | None = None) -> _Outcome:
    body = {"detail": detail, "error_type": err_type}
    headers = {"X-Fal-Error-Type": err_type, **dict(extra_headers or {})}
    return _Outcome(status, _json(body), headers, error=detail, error_type=err_type, webhook_status="ERROR",
                    webhook_error=f"Invalid status code: {status}", payload=body)


def _lifecycle_seconds(header: str | None) -> float | None:
    """`X-Fal-Object-Lifecycle-Preference: {"expiration_duration_seconds": N}`."""
    if not header:
        return None
    try:
        seconds = float(json.loads(header)["expiration_duration_seconds"])
    except (ValueError, KeyError, TypeError):
        return None
    return seconds if seconds >= 0 else None


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- core


class _Core:
    """Queue, jobs, faults, webhooks and counters; independent of HTTP."""

    def __init__(self, config: EmulatorConfig, state_dir: Path, signing_key: Ed25519PrivateKey,
                 client_verify: ssl.SSLContext, workers: int) -> None:
        self.config = config
        self.initial_config = config.as_dict()
        self.state_dir = state_dir
        self.media_dir = state_dir / "media"
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self.signing_key = signing_key
        self.base_url = ""  # set once the server listens
        self.closed = False
        self.lock = threading.RLock()
        self.jobs: dict[str, _Job] = {}
        self.waiting: deque[_Job] = deque()
        self.edit_cache: OrderedDict[tuple[str, str, int, str], tuple[bytes, int, int]] = OrderedDict()
        self.running = 0
        self.epoch_ids: set[str] = set()  # request ids shown by stats() since the last reset
        self.counters: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self._seq = itertools.count()
        self.scheduler = _Scheduler()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fal-emulator-job")
        self.webhook_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fal-emulator-webhook")
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        self.http = httpx.Client(verify=client_verify, trust_env=False, follow_redirects=True, limits=limits)

    def close(self) -> None:
        self.closed = True
        self.scheduler.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.webhook_pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()

    # -- knobs and counters

    def configure(self, knobs: Mapping[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.config.update(knobs)
            return self.config.as_dict()

    def reset(self, restore_config: bool = False) -> None:
        with self.lock:
            self.counters.clear()
            self.faults_injected.clear()
            self.epoch_ids.clear()
            if restore_config:
                fresh = EmulatorConfig()
                fresh.update(self.initial_config)
                self.config.update(fresh.as_dict())

    def stats(self, include_requests: bool = True) -> dict[str, Any]:
        with self.lock:
            # Like every counter: jobs submitted since the last reset.
            states = Counter(self.jobs[rid].state for rid in self.epoch_ids if rid in self.jobs)
            out: dict[str, Any] = {
                key: self.counters[key]
                for key in ("submits", "enqueued", "status_calls", "result_calls", "cancels", "webhooks_sent",
                            "webhook_attempts", "webhooks_failed", "media_downloads", "auth_failures")
            }
            out["faults_injected"] = dict(self.faults_injected)
            out["in_queue"] = states[IN_QUEUE]
            out["in_progress"] = states[IN_PROGRESS]
            out["completed"] = states[COMPLETED]
            out["config"] = self.config.as_dict()
            if include_requests:
                out["requests"] = {rid: self.jobs[rid].info() for rid in self.epoch_ids if rid in self.jobs}
            return out

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] += n

    # -- submit

    def take_submit_fault(self) -> str | None:
        with self.lock:
            self.counters["submits"] += 1
            if not self.config.submit_faults:
                return None
            fault = self.config.submit_faults.pop(0)
            self.faults_injected[fault] += 1
            return fault

    def enqueue(self, app: str, base: str, arguments: Any, webhook_url: str | None,
                headers: Mapping[str, str]) -> tuple[_Job, int]:
        """Create a job (IN_QUEUE) and schedule it; returns it and its queue position."""
        now = time.monotonic()
        with self.lock:
            cfg = self.config
            fault = cfg.job_faults.pop(0) if cfg.job_faults else None
            if fault:
                self.faults_injected[fault] += 1
            request_id = str(uuid.uuid4())
            job = _Job(request_id=request_id, app=app, base=base, arguments=arguments,
                       webhook_url=webhook_url, fault=fault, latency=cfg.latency_seconds,
                       webhook_mode=cfg.webhook_mode,
                       honour_cancel=cfg.honour_cancel, download_timeout=cfg.download_timeout,
                       submitted_at=time.time(), seq=next(self._seq),
                       priority=headers.get("x-fal-queue-priority"))
            job.media_expiration_seconds = _lifecycle_seconds(
                headers.get("x-fal-object-lifecycle-preference"))
            job.store_io = headers.get("x-fal-store-io", "1").strip() != "0"
            timeout = headers.get("x-fal-request-timeout")
            if timeout:
                with contextlib.suppress(ValueError):
                    job.start_timeout = float(timeout)
                    job.start_deadline = now + job.start_timeout
            self.jobs[request_id] = job
            self.epoch_ids.add(request_id)
            self.counters["enqueued"] += 1
            position = self._queue_position(job)
            if job.webhook_mode == "early":
                # Processed inside the submit call (see submit handler); never queued.
                job.state, job.started_at = IN_PROGRESS, time.time()
                return job, position
            queue_seconds = cfg.queue_seconds
        self.scheduler.call_later(queue_seconds, self._ready, job)
        if job.start_deadline is not None:
            self.scheduler.call_later(job.start_deadline - now, self._start_deadline_passed, job)
        return job, position

    def run_early(self, job: _Job) -> None:
        """webhook_mode "early": run the job now and deliver its webhook before returning."""
        if job.fault == "never_complete":
            return
        outcome = self._compute(job)
        with self.lock:
            if job.state == COMPLETED:
                return
            self._complete(job, outcome)
        self._deliver(job, chain=0, attempt=0)

    # -- lifecycle

    def _queue_position(self, job: _Job) -> int:
        return sum(1 for other in self.jobs.values() if other.state == IN_QUEUE and other.seq < job.seq)

    def _ready(self, job: _Job) -> None:
        with self.lock:
            if job.state != IN_QUEUE:
                return
            limit = self.config.max_concurrency
            if limit and self.running >= limit:
                self.waiting.append(job)
                return
            self._start(job)

    def _start(self, job: _Job) -> None:  # lock held
        job.state, job.started_at = IN_PROGRESS, time.time()
        job.log("Request started")
        if job.fault == "never_complete":
            job.log("Generating...")
            return  # holds no slot: a stuck job must not stall the whole emulator
        job.holds_slot = True
        self.running += 1
        self.pool.submit(self._work, job)

    def _release(self, job: _Job) -> None:  # lock held
        if job.holds_slot:
            job.holds_slot = False
            self.running -= 1
        limit = self.config.max_concurrency
        while self.waiting and (not limit or self.running < limit):
            nxt = self.waiting.popleft()
            if nxt.state == IN_QUEUE:
                self._start(nxt)

    def _start_deadline_passed(self, job: _Job) -> None:
        with self.lock:
            if job.state != IN_QUEUE:
                return
            with contextlib.suppress(ValueError):
                self.waiting.remove(job)
            outcome = _infra_error(504, "Request timed out", "request_timeout",
                                   {"X-Fal-Request-Timeout-Type": "user"})
            self._complete(job, outcome)
        self._schedule_webhook(job)

    def _work(self, job: _Job) -> None:
        try:
            outcome = self._compute(job)
        except Exception:  # noqa: BLE001 - reported as the model's internal error
            if self.closed:
                return
            log.exception("emulated model failed on %s", job.request_id)
            outcome = _infra_error(500, "Internal server error", "internal_error")
        delay = (job.started_at or time.time()) + job.latency - time.time()
        self.scheduler.call_later(delay, self._finish, job, outcome)

    def _finish(self, job: _Job, outcome: _Outcome) -> None:
        with self.lock:
            if job.state == COMPLETED:  # cancelled meanwhile
                return
            self._complete(job, outcome)
        self._schedule_webhook(job)

    def _complete(self, job: _Job, outcome: _Outcome) -> None:  # lock held
        job.outcome = outcome
        job.state = COMPLETED
        job.completed_at = time.time()
        if not job.store_io:
            job.arguments = None  # X-Fal-Store-IO: 0: the payload is not kept
        if job.media_expiration_seconds is not None:
            self.scheduler.call_later(job.media_expiration_seconds, self._expire_media, job)
        job.log("Request finished" if outcome.error is None else f"Request failed: {outcome.error_type}")
        self._release(job)

    def _expire_media(self, job: _Job) -> None:
        with self.lock:
            names, job.media_files = job.media_files, []
            job.media_expired = True
        for name in names:
            with contextlib.suppress(OSError):
                (self.media_dir / name).unlink()

    def result_expired(self, job: _Job) -> bool:
        return (job.completed_at is not None
                and time.time() - job.completed_at > self.config.result_retention_seconds)

    def cancel(self, job: _Job) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.counters["cancels"] += 1
            if job.state == COMPLETED:
                return 400, {"status": "ALREADY_COMPLETED"}
            job.cancel_requested = True
            if job.state == IN_QUEUE or job.honour_cancel:
                with contextlib.suppress(ValueError):
                    self.waiting.remove(job)
                body = {"detail": "Request was cancelled", "error_type": "request_cancelled"}
                self._complete(job, _Outcome(400, _json(body), {}, error="Request was cancelled",
                                             error_type="request_cancelled", webhook_status="ERROR",
                                             webhook_error="Request was cancelled", payload=body))
                deliver = self.config.webhook_on_cancel
            else:
                deliver = False
        if deliver:
            self._schedule_webhook(job)
        return 202, {"status": "CANCELLATION_REQUESTED"}

    # -- the model itself

    def _compute(self, job: _Job) -> _Outcome:
        fault = job.fault
        if fault == "content_policy":
            return _model_error(422, ["body", "prompt"], CONTENT_POLICY_MSG, "content_policy_violation",
                                retryable=False)
        if fault == "no_media":
            return _model_error(422, ["body"], "The model did not generate any media. Try another prompt.",
                                "no_media_generated", retryable=True)
        if fault == "error_internal":
            return _infra_error(500, "Internal server error", "internal_error")
        if fault == "malformed_result":
            body = {"images": [{"content_type": "image/jpeg", "file_name": "missing-url.jpg"}],
                    "description": None}
            return _Outcome(200, _json(body), payload=body)
        if fault == "garbage_result":
            return _Outcome(200, b"<html><body>upstream exploded</body></html>",
                            {"Content-Type": "text/html"}, payload=None,
                            payload_error="Response payload is not valid JSON")
        return self._edit(job)

    def _edit(self, job: _Job) -> _Outcome:
        args = job.arguments if isinstance(job.arguments, dict) else {}
        prompt = args.get("prompt")
        urls = args.get("image_urls")
        if not isinstance(prompt, str) or not prompt.strip():
            return _model_error(422, ["body", "prompt"], "Field required", "missing")
        if not isinstance(urls, list) or not urls or not isinstance(urls[0], str):
            return _model_error(422, ["body", "image_urls"], "Field required", "missing")
        output_format = str(args.get("output_format", "jpeg")).lower()
        if output_format not in _CONTENT_TYPES:
            return _model_error(422, ["body", "output_format"], "Input should be 'jpeg', 'png' or 'webp'",
                                "literal_error", input_value=output_format)
        try:
            num_images = max(1, min(4, int(args.get("num_images", 1))))
        except (TypeError, ValueError):
            num_images = 1
        url = urls[0]
        job.log("Downloading input image")
        try:
            response = self.http.get(url, timeout=job.download_timeout)
            data = response.content
            ok = response.status_code == 200 and bool(data)
        except httpx.HTTPError as exc:
            log.info("download for %s failed: %s", job.request_id, type(exc).__name__)
            ok, data = False, b""
        if not ok:
            return _model_error(422, ["body", "image_urls", 0], "Failed to download the file. Please check "
                                "if the URL is accessible.", "file_download_error", input_value=url)
        from PIL import Image, UnidentifiedImageError

        images = []
        for variant in range(num_images):
            try:
                encoded, width, height = self._edit_cached(data, prompt, variant, output_format)
            except Image.DecompressionBombError:
                return _model_error(422, ["body", "image_urls", 0], "Image too large", "image_too_large",
                                    input_value=url)
            except (UnidentifiedImageError, OSError, ValueError):
                return _model_error(422, ["body", "image_urls", 0], "Failed to load the image. Please "
                                    "check if the image is a valid image file.", "image_load_error",
                                    input_value=url)
            extension = "jpg" if output_format == "jpeg" else output_format
            name = f"{job.request_id}-{variant}.{extension}"
            (self.media_dir / name).write_bytes(encoded)
            job.media_files.append(name)
            images.append({"url": f"{self.base_url}/media/{name}",
                           "content_type": _CONTENT_TYPES[output_format], "file_name": name,
                           "file_size": len(encoded), "width": width, "height": height})
        body = {"images": images, "description": f"Emulated edit of the hair region: {prompt[:200]}"}
        return _Outcome(200, _json(body), payload=body)

    def _edit_cached(self, data: bytes, prompt: str, variant: int,
                     output_format: str) -> tuple[bytes, int, int]:
        """edit_image, memoised on the downloaded bytes: load tests send one selfie many times.
        (The download itself always happens, so expired URLs still fail.)"""
        key = (hashlib.sha256(data).hexdigest(), prompt, variant, output_format)
        with self.lock:
            hit = self.edit_cache.get(key)
            if hit is not None:
                self.edit_cache.move_to_end(key)
                return hit
        result = edit_image(data, prompt, variant=variant, output_format=output_format)
        with self.lock:
            self.edit_cache[key] = result
            while len(self.edit_cache) > 32:
                self.edit_cache.popitem(last=False)
        return result

    # -- webhooks

    def _schedule_webhook(self, job: _Job) -> None:
        if not job.webhook_url:
            return
        mode = job.webhook_mode
        if mode == "none":
            job.deliveries.append({"suppressed": True})
            return
        if mode == "late":
            self.scheduler.call_later(self.config.webhook_late_seconds, self._deliver_async, job, 0, 0)
            return
        self._deliver_async(job, 0, 0)
        if mode == "duplicate":
            self.scheduler.call_later(self.config.webhook_duplicate_seconds, self._deliver_async,
                                      job, 1, 0)

    def _deliver_async(self, job: _Job, chain: int, attempt: int) -> None:
        with contextlib.suppress(RuntimeError):  # pool shut down
            self.webhook_pool.submit(self._deliver, job, chain, attempt)

    def webhook_body(self, job: _Job) -> bytes:
        outcome = job.outcome
        assert outcome is not None
        body: dict[str, Any] = {"request_id": job.request_id, "gateway_request_id": job.request_id,
                                "status": outcome.webhook_status, "payload": outcome.payload}
        if outcome.webhook_error:
            body["error"] = outcome.webhook_error
        if outcome.payload_error:
            body["payload_error"] = outcome.payload_error
        return _json(body)

    def jwks(self) -> dict[str, Any]:
        raw = self.signing_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)
        kid = hashlib.sha256(raw).hexdigest()[:16]
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "use": "sig",
                          "alg": "EdDSA"}]}

    def sign(self, request_id: str, user_id: str, timestamp: str, body: bytes) -> str:
        message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        return self.signing_key.sign(message).hex()

    def _deliver(self, job: _Job, chain: int, attempt: int) -> None:
        assert job.webhook_url
        body = self.webhook_body(job)
        user_id = self.config.user_id
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fal-emulator-webhook/1.0",
            "X-Fal-Webhook-Request-Id": job.request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": self.sign(job.request_id, user_id, timestamp, body),
        }
        record: dict[str, Any] = {"chain": chain, "attempt": attempt, "at": time.time()}
        try:
            response = self.http.post(job.webhook_url, content=body, headers=headers, timeout=15.0)
            record["status_code"] = response.status_code
            delivered = 200 <= response.status_code < 300
        except httpx.HTTPError as exc:
            record["error"] = type(exc).__name__
            delivered = False
        with self.lock:
            job.deliveries.append(record)
            self.counters["webhook_attempts"] += 1
            delays = self.config.webhook_retry_delays
            if delivered:
                self.counters["webhooks_sent"] += 1
            elif attempt >= len(delays):
                self.counters["webhooks_failed"] += 1
        if not delivered and attempt < len(delays):
            self.scheduler.call_later(delays[attempt], self._deliver_async, job, chain, attempt + 1)


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 2048

    def __init__(self, address: tuple[str, int], core: _Core, tls: ssl.SSLContext, verbose: bool) -> None:
        self.core = core
        self.tls = tls
        self.verbose = verbose
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, so a slow or
        # failing client cannot hold up accept() for everyone else.
        request.settimeout(30)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            if self.verbose:
                log.info("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            _Handler(conn, client_address, self)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            if self.verbose:
                log.info("connection from %s ended: %r", client_address, exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fal-emulator/1.0"
    timeout = 30  # idle keep-alive connections give their thread back after this
    server: _Server

    # -- plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            log.info("%s %s", self.address_string(), format % args)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any = b"", headers: Mapping[str, str] | None = None, *,
              fal_request_id: bool = True, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else _json(body)
        self.send_response(status)
        merged = {"Content-Type": content_type, **(headers or {})}
        for key, value in merged.items():
            self.send_header(key, value)
        if fal_request_id:
            self.send_header("x-fal-request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _authorized(self) -> bool:
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "key" and token.strip():
            return True
        self.server.core.count("auth_failures")
        self._send(401, {"detail": "Missing or invalid Authorization header (expected 'Key <FAL_KEY>')."})
        return False

    def _route(self) -> None:
        try:
            self._dispatch()
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            self.close_connection = True
            if self.server.verbose:
                log.info("%s %s from %s failed: %r", self.command, self.path, self.client_address, exc)
        except Exception:  # noqa: BLE001 - keep serving; the client sees a 500
            log.exception("handler failed for %s %s", self.command, self.path)
            with contextlib.suppress(OSError):
                self._send(500, {"detail": "emulator bug, see its log", "error_type": "internal_error"})

    do_GET = do_POST = do_PUT = do_HEAD = _route  # noqa: N815 - stdlib naming

    # -- routes

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        core = self.server.core
        method = self.command
        body = self._body() if method in ("POST", "PUT") else b""

        if path == "/.well-known/jwks.json" and method in ("GET", "HEAD"):
            return self._send(200, core.jwks())
        if path.startswith("/media/") and method in ("GET", "HEAD"):
            return self._media(path[len("/media/"):])
        if path.startswith("/_emulator/"):
            return self._control(path[len("/_emulator/"):], method, body, query)

        match = _REQUEST_PATH.match(path)
        if match:
            if not self._authorized():
                return None
            return self._request_op(match["base"], match["id"], match["tail"] or "", method, query)
        if method == "POST":
            if not self._authorized():
                core.count("submits")
                return None
            return self._submit(path, body, query)
        return self._send(404, {"detail": f"Not found: {method} {path}"})

    def _media(self, name: str) -> None:
        core = self.server.core
        file = core.media_dir / name
        if not _MEDIA_NAME.match(name) or not file.is_file():
            return self._send(404, {"detail": "File not found"})
        core.count("media_downloads")
        if core.config.media_delay_seconds:
            time.sleep(core.config.media_delay_seconds)
        suffix = file.suffix.lower()
        ctype = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}.get(suffix,
                                                                                      "application/octet-stream")
        return self._send(200, file.read_bytes(), {"Cache-Control": "public, max-age=3600"},
                          fal_request_id=False, content_type=ctype)

    def _control(self, op: str, method: str, body: bytes, query: dict[str, list[str]]) -> None:
        core = self.server.core
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return self._send(400, {"detail": "body must be JSON"})
        if op == "health":
            return self._send(200, {"ok": True})
        if op == "stats" and method == "GET":
            include = query.get("requests", ["1"])[0] not in ("0", "false", "no")
            return self._send(200, core.stats(include_requests=include))
        if op == "config" and method == "GET":
            return self._send(200, core.config.as_dict())
        if op == "config" and method == "POST":
            if not isinstance(payload, dict):
                return self._send(400, {"detail": "body must be a JSON object of knobs"})
            try:
                return self._send(200, core.configure(payload))
            except (ValueError, TypeError) as exc:
                return self._send(400, {"detail": str(exc)})
        if op == "reset" and method == "POST":
            core.reset(restore_config=bool(isinstance(payload, dict) and payload.get("config")))
            return self._send(200, {"ok": True})
        return self._send(404, {"detail": f"no control endpoint {method} /_emulator/{op}"})

    def _submit(self, path: str, body: bytes, query: dict[str, list[str]]) -> None:
        core = self.server.core
        fault = core.take_submit_fault()
        if fault and fault != "drop_after_enqueue":
            return self._submit_fault(fault, path)
        split = _split_app(path)
        if split is None:
            return self._send(404, {"detail": f"Application {path.strip('/')!r} not found"})
        app, base = split
        try:
            arguments = json.loads(body) if body else {}
        except ValueError:
            return self._send(422, {"detail": [{"loc": ["body"], "msg": "Invalid JSON body",
                                                "type": "json_invalid"}]})
        webhook_url = query.get("fal_webhook", [None])[0]
        if webhook_url and urlsplit(webhook_url).scheme not in ("http", "https"):
            return self._send(400, {"detail": "fal_webhook must be an http(s) URL",
                                    "error_type": "bad_request"})
        headers = {k.lower(): v for k, v in self.headers.items()}
        job, position = core.enqueue(app, base, arguments, webhook_url, headers)
        if job.webhook_mode == "early":
            core.run_early(job)
        delay = core.config.submit_delay_seconds
        if delay:
            time.sleep(delay)
        if fault == "drop_after_enqueue":
            return self._drop()
        urls = self._urls(job)
        return self._send(200, {"status": IN_QUEUE, "request_id": job.request_id,
                                "gateway_request_id": job.request_id, "queue_position": position, **urls})

    def _urls(self, job: _Job) -> dict[str, str]:
        base = f"{self.server.core.base_url}/{job.base}/requests/{job.request_id}"
        return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}

    def _submit_fault(self, fault: str, path: str) -> None:
        app = path.strip("/")
        infra: dict[str, tuple[int, str, str, dict[str, str]]] = {
            "429": (429, "Too many requests. Please slow down.", "rate_limited", {"Retry-After": "1"}),
            "500_internal": (500, "Internal server error", "internal_error", {}),
            "503_runner": (503, "No runner could be allocated to handle the request.",
                           "runner_scheduling_failure", {}),
            "504_startup": (504, "The runner did not start within the allowed time.", "startup_timeout", {}),
            "504_request_timeout": (504, "Request timed out", "request_timeout",
                                    {"X-Fal-Request-Timeout-Type": "user"}),
            "retryable_header": (503, "The runner disconnected unexpectedly.", "runner_disconnected",
                                 {"X-Fal-Retryable": "true"}),
        }
        if fault in infra:
            status, detail, err_type, extra = infra[fault]
            return self._send(status, {"detail": detail, "error_type": err_type},
                              {"X-Fal-Error-Type": err_type, **extra})
        if fault == "400":
            return self._send(400, {"detail": "Bad request", "error_type": "bad_request"},
                              {"X-Fal-Error-Type": "bad_request"})
        if fault == "401":
            return self._send(401, {"detail": "Invalid API key"})
        if fault == "403":
            return self._send(403, {"detail": "User is locked. Reason: Exhausted balance. "
                                              "Top up your balance at fal.ai/dashboard/billing."})
        if fault == "404":
            return self._send(404, {"detail": f"Application {app!r} not found"})
        if fault == "422_content_policy":
            return self._send(422, {"detail": [{
                "loc": ["body", "prompt"], "type": "content_policy_violation",
                "msg": CONTENT_POLICY_MSG, "url": "https://docs.fal.ai/errors#content_policy_violation"}]},
                {"X-Fal-Retryable": "false"})
        if fault == "malformed":
            return self._send(200, b"<html><body>OK</body></html>", content_type="text/html")
        if fault == "502_nginx":
            return self._send(502, _NGINX_502, {"Server": "nginx"}, fal_request_id=False,
                              content_type="text/html")
        if fault == "drop":
            return self._drop()
        raise AssertionError(f"unhandled fault {fault}")

    def _request_op(self, base: str, request_id: str, tail: str, method: str,
                    query: dict[str, list[str]]) -> None:
        core = self.server.core
        counter = {"/status": "status_calls", "/cancel": "cancels", "": "result_calls"}[tail]
        with core.lock:
            job = core.jobs.get(request_id)
            if counter != "cancels":
                core.counters[counter] += 1
        if job is None or job.base != base:
            if job is not None:
                detail = (f"Request {request_id} belongs to {job.base!r}, not {base!r}: queue URLs take "
                          "owner/alias only, without the endpoint path")
            else:
                detail = f"Request {request_id} not found"
            if tail == "/cancel":
                core.count("cancels")
                return self._send(404, {"status": "NOT_FOUND", "detail": detail})
            return self._send(404, {"detail": detail})
        if tail == "/cancel":
            if method != "PUT":
                return self._send(405, {"detail": "use PUT"})
            status, payload = core.cancel(job)
            return self._send(status, payload)
        if method not in ("GET", "HEAD"):
            return self._send(405, {"detail": "use GET"})
        if tail == "/status":
            return self._status(job, query)
        return self._result(job)

    def _status(self, job: _Job, query: dict[str, list[str]]) -> None:
        core = self.server.core
        with_logs = query.get("logs", ["0"])[0].lower() in ("1", "true")
        with core.lock:
            job.status_calls += 1
            urls = self._urls(job)
            logs = list(job.logs) if with_logs else None
            body: dict[str, Any] = {"status": job.state, "request_id": job.request_id,
                                    "response_url": urls["response_url"], "status_url": urls["status_url"],
                                    "cancel_url": urls["cancel_url"], "logs": logs}
            if job.state == IN_QUEUE:
                body["queue_position"] = core._queue_position(job)
                return self._send(202, body)
            if job.state == IN_PROGRESS:
                return self._send(202, body)
            outcome = job.outcome
            assert outcome is not None
            started = job.started_at or job.completed_at or 0.0
            body["metrics"] = {"inference_time": round((job.completed_at or started) - started, 3)}
            if outcome.error is not None:
                body["error"] = outcome.error
                body["error_type"] = outcome.error_type
        return self._send(200, body)

    def _result(self, job: _Job) -> None:
        core = self.server.core
        with core.lock:
            job.result_calls += 1
            outcome = job.outcome
            state = job.state
        if outcome is None:
            return self._send(400, {"detail": f"Request is still {state}"})
        if core.result_expired(job):
            return self._send(404, {"detail": f"Request {job.request_id} not found"})
        headers = dict(outcome.headers)
        ctype = headers.pop("Content-Type", "application/json")
        return self._send(outcome.status_code, outcome.body, headers, content_type=ctype)


# --------------------------------------------------------------------------- keys, certificates


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _load_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The webhook signing key, kept in the state dir so that restarts keep the JWKS stable."""
    path = state_dir / "webhook-ed25519-key.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, Ed25519PrivateKey):
            return key
    key = Ed25519PrivateKey.generate()
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return key


def _system_roots() -> str:
    try:
        import certifi
    except ImportError:
        return ssl.get_default_verify_paths().cafile or ""
    return certifi.where()


def _prepare_tls(state_dir: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, Path, Path]:
    """(server context, client context trusting system roots + our CA, ca.pem, ca-bundle.pem).

    The CA is kept in the state dir (ca.pem + ca-key.pem) so that clients that already
    loaded ca.pem keep trusting a restarted emulator; the server certificate is fresh each start.
    """
    import trustme

    ca_path, ca_key_path = state_dir / "ca.pem", state_dir / "ca-key.pem"
    if ca_path.exists() and ca_key_path.exists():
        ca = trustme.CA.from_pem(ca_path.read_bytes(), ca_key_path.read_bytes())
    else:
        ca = trustme.CA(organization_name="fal emulator (development only)")
        _write_private(ca_key_path, ca.private_key_pem.bytes())
        ca.cert_pem.write_to_path(str(ca_path))
    leaf = ca.issue_cert("127.0.0.1", "localhost", "::1", common_name="fal-emulator")
    cert_path, key_path = state_dir / "server.pem", state_dir / "server-key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    _write_private(key_path, leaf.private_key_pem.bytes())
    bundle_path = state_dir / "ca-bundle.pem"
    roots = _system_roots()
    system = Path(roots).read_bytes() if roots and Path(roots).is_file() else b""
    bundle_path.write_bytes(system.rstrip(b"\n") + b"\n" + ca_path.read_bytes())

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(str(cert_path), str(key_path))
    client_ctx = ssl.create_default_context(cafile=str(bundle_path))
    return server_ctx, client_ctx, ca_path, bundle_path


# --------------------------------------------------------------------------- public API


class FalEmulator:
    """The emulator running in background threads of the current process.

    >>> with FalEmulator(latency_seconds=0.5) as emu:
    ...     fal_client.client.QUEUE_URL_FORMAT = emu.queue_url_format  # + SSL_CERT_FILE=emu.ca_path
    """

    def __init__(self, state_dir: str | Path | None = None, port: int = 0, *, host: str = "127.0.0.1",
                 workers: int = 4, verbose: bool = False, **knobs: Any) -> None:
        self._own_dir = state_dir is None
        if state_dir is None:
            state_dir = tempfile.mkdtemp(prefix="fal-emulator-")
        self.state_dir = Path(state_dir)
        self.host = host
        self._requested_port = port
        self.workers = workers
        self.verbose = verbose
        self.config = EmulatorConfig()
        self.config.update(knobs)
        self._core: _Core | None = None
        self._stopped = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_path = self.state_dir / "ca.pem"
        self.ca_bundle_path = self.state_dir / "ca-bundle.pem"

    # -- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FalEmulator already started")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        server_ctx, client_ctx, self.ca_path, self.ca_bundle_path = _prepare_tls(self.state_dir)
        core = _Core(self.config, self.state_dir, _load_signing_key(self.state_dir), client_ctx, self.workers)
        server = _Server((self.host, self._requested_port), core, server_ctx, self.verbose)
        core.base_url = f"https://{self.host}:{server.server_address[1]}"
        self._core, self._server = core, server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fal-emulator-http", daemon=True)
        self._stopped.clear()
        self._thread.start()
        log.info("fal emulator listening on %s (CA %s)", self.base_url, self.ca_path)
        return self

    def stop(self) -> None:
        server, core = self._server, self._core
        if server is None or core is None:
            return
        server.shutdown()
        server.server_close()
        core.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._core = self._thread = None
        if self._own_dir:
            import shutil

            shutil.rmtree(self.state_dir, ignore_errors=True)
        self._stopped.set()

    def serve_forever(self) -> None:
        """Block until stop() has finished (called from another thread or a signal handler)."""
        while not self._stopped.wait(timeout=0.5):
            pass

    def __enter__(self) -> Self:
        return self if self._server is not None else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- addresses

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FalEmulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def queue_url_format(self) -> str:
        """The value for `fal_client.client.QUEUE_URL_FORMAT` (ends with a slash)."""
        return self.base_url + "/"

    @property
    def jwks_url(self) -> str:
        return self.base_url + "/.well-known/jwks.json"

    def client_env(self, key: str = "emulator-key", bundle: bool = True) -> dict[str, str]:
        """Environment for a process whose (unmodified, not yet imported) fal_client should use us."""
        return _client_env(self.host, self.port, self.ca_bundle_path if bundle else self.ca_path, key)

    # -- keys

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._require_core().signing_key.public_key()

    def jwks(self) -> dict[str, Any]:
        """The document served at jwks_url."""
        return self._require_core().jwks()

    # -- knobs and counters

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at runtime; returns the full configuration. ValueError on bad input."""
        return self._require_core().configure(knobs)

    def stats(self, include_requests: bool = True) -> dict[str, Any]:
        return self._require_core().stats(include_requests)

    def reset(self, config: bool = False) -> None:
        """Clear counters and per-request stats (jobs in flight still finish); config=True
        also restores the knobs given at start."""
        self._require_core().reset(restore_config=config)

    def _require_core(self) -> _Core:
        if self._core is None:
            raise RuntimeError("FalEmulator not started")
        return self._core

    def __repr__(self) -> str:
        where = self.base_url if self._server is not None else "stopped"
        return f"<FalEmulator {where}>"


def _client_env(host: str, port: int, ca: Path, key: str) -> dict[str, str]:
    return {"FAL_QUEUE_RUN_HOST": f"{host}:{port}", "SSL_CERT_FILE": str(ca), "FAL_KEY": key}


class FalEmulatorProcess:
    """Handle on an emulator running as a subprocess (see start_emulator_process)."""

    def __init__(self, process: ManagedProcess, state_dir: Path, info: Mapping[str, Any]) -> None:
        self.process = process
        self.state_dir = state_dir
        self.port = int(info["port"])
        self.ca_path = Path(info["ca_path"])
        self.ca_bundle_path = Path(info["ca_bundle_path"])
        self.base_url = f"https://127.0.0.1:{self.port}"
        self.queue_url_format = self.base_url + "/"
        self.jwks_url = self.base_url + "/.well-known/jwks.json"

    def _http(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca_path)), trust_env=False,
                            timeout=10.0)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        with self._http() as http:
            response = http.request(method, self.base_url + path, json=body)
        if response.status_code >= 400:
            raise ValueError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def configure(self, **knobs: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/_emulator/config", knobs))

    def stats(self, include_requests: bool = True) -> dict[str, Any]:
        return dict(self._call("GET", "/_emulator/stats" + ("" if include_requests else "?requests=0")))

    def reset(self, config: bool = False) -> None:
        self._call("POST", "/_emulator/reset", {"config": config})

    def client_env(self, key: str = "emulator-key", bundle: bool = True) -> dict[str, str]:
        return _client_env("127.0.0.1", self.port, self.ca_bundle_path if bundle else self.ca_path, key)

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FalEmulatorProcess {self.base_url} pid={self.process.pid}>"


def start_emulator_process(state_dir: str | Path, port: int | None = None, latency: float = 1.0,
                           *, workers: int = 4, verbose: bool = False, **knobs: Any) -> FalEmulatorProcess:
    """Run the emulator as `python -m devstack.fal_emulator` and wait until it serves.

    With port=None the child binds a free port itself (no race) and reports it through
    <state_dir>/emulator.json, as it does the CA paths.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    info_path = state_dir / INFO_FILE
    info_path.unlink(missing_ok=True)
    args = [sys.executable, "-m", "devstack.fal_emulator", "--state-dir", str(state_dir),
            "--port", str(port or 0), "--latency", str(latency), "--workers", str(workers)]
    if knobs:
        args += ["--config", json.dumps(knobs)]
    if verbose:
        args.append("--verbose")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    process = ManagedProcess(args, state_dir / "fal-emulator.log", env=env, cwd=REPO_ROOT,
                             name="fal-emulator").start()

    def ready() -> bool:
        info = json.loads(info_path.read_text())
        return bool(info.get("pid") == process.pid)

    if not wait_until(ready, START_TIMEOUT, interval=0.05, abort=lambda: not process.alive()):
        code = process.returncode
        process.stop()
        raise RuntimeError(f"fal emulator did not start (exit code {code}); last lines of "
                           f"{process.log_path}:\n{process.log_tail()}")
    handle = FalEmulatorProcess(process, state_dir, json.loads(info_path.read_text()))
    log.info("fal emulator ready at %s (pid %s)", handle.base_url, process.pid)
    return handle


# --------------------------------------------------------------------------- CLI


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

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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


if __name__ == "__main__":
    sys.exit(main())
