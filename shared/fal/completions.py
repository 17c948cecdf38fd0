"""What fal reported for one submission, parsed once into a typed value.

A completion comes from a webhook (fal's body) or from a status check; either way
the worker sees a `Completion`. fal's model errors name their type in
`detail[0].type` (422 bodies, webhook payloads) or `error_type`; that is read here
and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Completion:
    """`image_urls` is empty when the worker is to fetch the result from fal by its
    request id (always, after a webhook: see `as_task_args`)."""

    ok: bool
    request_id: str | None
    image_urls: tuple[str, ...] = ()
    error_type: str | None = None

    def as_task_args(self) -> dict[str, Any]:
        """Without the image links: they are public URLs of a user's face, and task
        arguments show in Flower and in failure logs."""
        return {k: v for k, v in asdict(self).items() if k != "image_urls"}


def model_error_type(payload: Any) -> str | None:
    """The model error's type of a fal error body: `{"detail": [{"type": …}]}`."""
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict) and detail[0].get("type"):
        return str(detail[0]["type"])
    return None


def completion_from_webhook(body: dict[str, Any], signed_request_id: str | None = None
                            ) -> Completion:
    """fal's webhook body: {request_id, gateway_request_id?, status: OK|ERROR, payload,
    error?}; the request id is the signed header's when there is one. The payload's
    images are not kept: the worker fetches the result by id."""
    request_id = signed_request_id or body.get("request_id")
    if body.get("status") == "OK":
        return Completion(True, request_id)
    payload = body.get("payload")
    error_type = model_error_type(payload)
    if error_type is None and isinstance(payload, dict):
        error_type = payload.get("error_type")
    return Completion(False, request_id, error_type=error_type or body.get("error_type"))
