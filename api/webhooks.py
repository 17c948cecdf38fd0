"""POST /v1/webhooks/fal: fal.ai's completion callback (no bearer token).

Checked (shared/fal/webhooks.py) for our HMAC job token and fal's signature; the
work itself is handed to a worker; if the broker is down we answer 503 and fal
delivers again later.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import request
from flask.views import MethodView
from marshmallow import INCLUDE, Schema, fields

from api.boundary import Blueprint, refuse_json
from api.context import app_services
from api.schemas import BaseSchema
from shared.core.errors import AppError
from shared.core.task_names import COMPLETE_TRYON
from shared.core.untrusted_json import UnsafeJson
from shared.fal.webhooks import (
    TIMESTAMP_TOLERANCE_SECONDS,
    VerifierUnavailable,
    WebhookRejected,
    accept_delivery,
)

log = logging.getLogger(__name__)
blp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks",
                description="Callbacks from fal.ai (signature-verified, no bearer token)")


class ReceivedSchema(BaseSchema):
    received = fields.Boolean(required=True, metadata={"enum": [True]})


class FalWebhookDeliverySchema(Schema):
    """fal's completion body, for the document only: the view reads the raw bytes, as
    fal's signature covers them, and parses them after both checks pass."""

    class Meta:
        unknown = INCLUDE  # fal may add fields

    request_id = fields.String(required=True)
    gateway_request_id = fields.String()
    status = fields.String(required=True, metadata={"enum": ["OK", "ERROR"]})
    payload = fields.Raw(allow_none=True, metadata={"type": "object"})
    error = fields.String(allow_none=True)


def _required(name: str, where: str, description: str, example: str) -> dict[str, Any]:
    return {"name": name, "in": where, "required": True, "description": description,
            "schema": {"type": "string"}, "example": example}


# What the view checks, documented without being parsed by webargs: a bad value is
# 401 `webhook.invalid` (the HMAC and signature checks), never a 422 that would tell
# a prober which part it got right.
DELIVERY = {
    "parameters": [
        _required("job", "query", "Our job id, from the webhook URL given to fal",
                  "3b6bc467-f8a7-4f55-8fbc-487331cf08b3"),
        _required("attempt", "query", "The job's submission attempt, from the same URL", "1"),
        _required("token", "query", "HMAC of job and attempt, from the same URL", "EXAMPLE"),
        _required("X-Fal-Webhook-Request-Id", "header", "fal's request id (signed)",
                  "764cabcf-b745-4b3e-ae38-1200304cf45b"),
        _required("X-Fal-Webhook-User-Id", "header", "fal's user id (signed)", "EXAMPLE"),
        _required("X-Fal-Webhook-Timestamp", "header",
                  f"Unix seconds (signed); more than {TIMESTAMP_TOLERANCE_SECONDS} s off is "
                  "refused", "1764602980"),
        _required("X-Fal-Webhook-Signature", "header",
                  "Hex Ed25519 signature by a key of fal's JWKS", "EXAMPLE"),
    ],
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": FalWebhookDeliverySchema}}},
}


@blp.route("/fal")
class FalWebhook(MethodView):
    @blp.doc(security=[], **DELIVERY)
    @blp.response(200, ReceivedSchema)
    def post(self) -> Any:
        """fal.ai completion callback"""
        services = app_services()
        try:
            job_id, attempt, completion = accept_delivery(
                services.fal_webhooks, services.svc.settings.webhook_secret, request.args,
                dict(request.headers), request.get_data())
        except VerifierUnavailable:
            raise AppError("service.unavailable", retry_after=30) from None
        except WebhookRejected as exc:
            log.warning("fal webhook refused: %s", exc.reason)
            raise AppError("webhook.invalid") from None
        except UnsafeJson as exc:  # signed by fal, yet past our limits
            refuse_json(exc)
        if not services.svc.dispatch(COMPLETE_TRYON, job_id, attempt, completion.as_task_args()):
            raise AppError("service.unavailable", retry_after=30)
        return {"received": True}
