"""/v1/me: erase everything of the caller, and read how far that is (SPEC §3, §6)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields

from api.boundary import Blueprint
from api.context import app_services, current_user_id
from api.examples import EXAMPLES
from api.schemas import BaseSchema
from shared.models import ErasureRequest, ErasureStatus
from shared.privacy.erasure_requests import read_erasure, request_erasure

blp = Blueprint("me", __name__, url_prefix="/v1/me", description="The signed-in user")


class ErasureSchema(BaseSchema):
    erasureId = fields.String(required=True)  # noqa: N815 - wire name
    status = fields.String(required=True, metadata={
        "enum": [ErasureStatus.PENDING, ErasureStatus.RUNNING, ErasureStatus.DONE]})
    requestedAt = fields.DateTime(required=True)  # noqa: N815
    completedAt = fields.DateTime(required=True, allow_none=True)  # noqa: N815


def erasure_view(erasure: ErasureRequest) -> dict[str, Any]:
    return {"erasureId": erasure.id, "status": erasure.status,
            "requestedAt": erasure.requested_at, "completedAt": erasure.completed_at}


@blp.route("")
class Me(MethodView):
    @blp.response(202, ErasureSchema, example=EXAMPLES["Erasure.requested"])
    def delete(self) -> Any:
        """Erase all of the caller's selfies, results and records (the audit trail stays)

        Stored before the answer (so 202 even while the queue is down) and resumed
        until done; asking again returns the same erasure. Poll GET /v1/me/erasure."""
        return erasure_view(request_erasure(app_services().svc, current_user_id()))


@blp.route("/erasure")
class MyErasure(MethodView):
    @blp.response(200, ErasureSchema)
    def get(self) -> Any:
        """How far the caller's erasure is: pending, running, done"""
        return erasure_view(read_erasure(app_services().svc, current_user_id()))
