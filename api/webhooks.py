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
from flask_smorest import Blueprint
from marshmallow import fields

from api.context import app_services
from api.schemas import BaseSchema
from shared.core.errors import AppError
from shared.core.task_names import COMPLETE_TRYON
from shared.fal.webhooks import VerifierUnavailable, WebhookRejected, accept_delivery

log = logging.getLogger(__name__)
blp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks",
                description="Callbacks from fal.ai (signature-verified, no bearer token)")


class ReceivedSchema(BaseSchema):
    received = fields.Boolean(required=True, metadata={"enum": [True]})


@blp.route("/fal")
class FalWebhook(MethodView):
    @blp.doc(security=[])
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
        if not services.svc.dispatch(COMPLETE_TRYON, job_id, attempt, completion.as_task_args()):
            raise AppError("service.unavailable", retry_after=30)
        return {"received": True}
