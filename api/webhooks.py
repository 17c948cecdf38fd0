"""POST /v1/webhooks/fal: fal.ai's completion callback (no bearer token).

Checked twice: our HMAC job token in the URL (which job and attempt this is), and
fal's Ed25519 signature (that fal sent it, recently). The work itself is handed to
a worker; if the broker is down we answer 503 and fal delivers again later.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import current_app, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.context import services
from shared.core.errors import AppError
from shared.fal.webhooks import (
    FalWebhookVerifier,
    SignedDelivery,
    VerifierUnavailable,
    WebhookRejected,
    check_job_token,
)
from shared.tryons.pipeline import COMPLETE_TASK, completion_from_webhook

log = logging.getLogger(__name__)
blp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks",
                description="Callbacks from fal.ai (signature-verified, no bearer token)")


@blp.route("/fal")
class FalWebhook(MethodView):
    @blp.doc(security=[])
    def post(self) -> Any:
        """fal.ai completion callback"""
        svc = services()
        job_id = request.args.get("job", "")
        try:
            attempt = int(request.args.get("attempt", ""))
            check_job_token(svc.settings.webhook_secret, job_id, attempt,
                            request.args.get("token", ""))
            verifier: FalWebhookVerifier = current_app.extensions["hairfluencer.fal_webhooks"]
            verifier.verify(SignedDelivery(
                request_id=request.headers.get("X-Fal-Webhook-Request-Id", ""),
                user_id=request.headers.get("X-Fal-Webhook-User-Id", ""),
                timestamp=request.headers.get("X-Fal-Webhook-Timestamp", ""),
                signature_hex=request.headers.get("X-Fal-Webhook-Signature", ""),
                body=request.get_data()))
            body = json.loads(request.get_data())
            if not isinstance(body, dict):
                raise ValueError("body")
        except VerifierUnavailable:
            raise AppError("service.unavailable", retry_after=30) from None
        except (WebhookRejected, ValueError) as exc:
            log.warning("fal webhook refused: %s", getattr(exc, "reason", type(exc).__name__))
            raise AppError("webhook.invalid") from None
        # The attempt comes from our HMAC-checked URL token; the request id from the
        # signed header (fal does not promise that a body field equals it).
        completion = completion_from_webhook(body, request.headers.get("X-Fal-Webhook-Request-Id"))
        if not svc.dispatch(COMPLETE_TASK, job_id, attempt, completion.as_task_args()):
            raise AppError("service.unavailable", retry_after=30)
        return jsonify({"received": True})
