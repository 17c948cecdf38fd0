"""The emulator's knobs: every fault, webhook mode and timing a test can set at runtime."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_USER_ID = "fal-emulator-user"

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


@dataclass
class EmulatorConfig:
    """Every runtime knob; see the package docstring (devstack/fal_emulator/__init__.py)."""

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


def client_env(host: str, port: int, ca: Path, key: str) -> dict[str, str]:
    """Environment for a process whose (unmodified, not yet imported) fal_client should use
    the emulator at host:port, trusting the CA file `ca`."""
    return {"FAL_QUEUE_RUN_HOST": f"{host}:{port}", "SSL_CERT_FILE": str(ca), "FAL_KEY": key}
