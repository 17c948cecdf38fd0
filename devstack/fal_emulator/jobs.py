"""What a request is: the job record, the outcome the model produced, fal's error bodies."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"

_APP_NAMESPACES = ("workflows", "comfy")


@dataclass
class Outcome:
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
class Job:
    """One submitted request and everything the emulator knows about it."""

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
    outcome: Outcome | None = None
    status_calls: int = 0
    result_calls: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    def log(self, message: str) -> None:
        self.logs.append({"message": message, "level": "INFO", "source": "user",
                          "timestamp": iso_now()})

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


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() % 1 * 1e6):06d}"


def split_app(path: str) -> tuple[str, str] | None:
    """(app id as submitted, "{namespace/}owner/alias") like fal_client's AppId; None if invalid."""
    parts = [p for p in path.strip("/").split("/") if p]
    if parts and parts[0] in _APP_NAMESPACES:
        if len(parts) < 3:
            return None
        return "/".join(parts), "/".join(parts[:3])
    if len(parts) < 2:
        return None
    return "/".join(parts), "/".join(parts[:2])



def model_error(status: int, loc: list[Any], msg: str, err_type: str, *, input_value: Any = None,
                retryable: bool | None = None) -> Outcome:
    item: dict[str, Any] = {"loc": loc, "msg": msg, "type": err_type,
                            "url": f"https://docs.fal.ai/errors#{err_type}"}
    if input_value is not None:
        item["input"] = input_value
    body = {"detail": [item]}
    headers = {} if retryable is None else {"X-Fal-Retryable": "true" if retryable else "false"}
    return Outcome(status, compact_json(body), headers, error=msg, error_type=err_type,
                   webhook_status="ERROR", webhook_error=f"Invalid status code: {status}", payload=body)


def infra_error(status: int, detail: str, err_type: str,
                extra_headers: Mapping[str, str] | None = None) -> Outcome:
    body = {"detail": detail, "error_type": err_type}
    headers = {"X-Fal-Error-Type": err_type, **dict(extra_headers or {})}
    return Outcome(status, compact_json(body), headers, error=detail, error_type=err_type,
                   webhook_status="ERROR", webhook_error=f"Invalid status code: {status}", payload=body)


def lifecycle_seconds(header: str | None) -> float | None:
    """`X-Fal-Object-Lifecycle-Preference: {"expiration_duration_seconds": N}`."""
    if not header:
        return None
    try:
        seconds = float(json.loads(header)["expiration_duration_seconds"])
    except (ValueError, KeyError, TypeError):
        return None
    return seconds if seconds >= 0 else None


def compact_json(obj: Any) -> bytes:
    """JSON without spaces, as fal sends it."""
    return json.dumps(obj, separators=(",", ":")).encode()
