"""DELETE /v1/me: erase everything of the caller (SPEC §3, §6)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.context import current_user_id, services
from shared.erasure import request_erasure
from shared.errors import AppError

blp = Blueprint("me", __name__, url_prefix="/v1/me", description="The signed-in user")


@blp.route("")
class Me(MethodView):
    @blp.response(202)
    def delete(self) -> Any:
        """Erase all of the caller's selfies, results and records (the audit trail stays)"""
        if not request_erasure(services(), current_user_id()):
            # Nothing erased yet and nothing queued: the app should ask again.
            raise AppError("service.unavailable", retry_after=30)
        return {"status": "accepted"}
