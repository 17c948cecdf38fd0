"""/v1/uploads: presign, confirm, read, list, delete."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from api.boundary import Blueprint
from api.context import app_services, current_user_id, list_endpoint, listed
from api.errors import error_object, request_locale
from api.uploads.schemas import (
    ConfirmRequestSchema,
    PresignRequestSchema,
    PresignResponseSchema,
    UploadListArgsSchema,
    UploadListSchema,
    UploadSchema,
    upload_view,
)
from shared.models import Upload
from shared.uploads import use_cases as uploads

blp = Blueprint("uploads", __name__, url_prefix="/v1/uploads",
                description="Direct-to-storage selfie uploads")


def _view(upload: Upload) -> dict[str, Any]:
    rejection = None
    if upload.rejection_code:
        obj = error_object(upload.rejection_code, request_locale())
        rejection = {k: obj[k] for k in ("code", "messageKey", "message")}
    return upload_view(upload, rejection)


@blp.route("/presign")
class Presign(MethodView):
    @blp.arguments(PresignRequestSchema)
    @blp.response(201, PresignResponseSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Issue a single-use presigned PUT for one selfie"""
        user_id = current_user_id()
        issued = uploads.presign(app_services().svc, user_id, content_type=body["contentType"],
                                 content_length=body["contentLength"], checksum=body["checksum"],
                                 daily_limit=app_services().quotas.limits.presign_daily.amount)
        return {"uploadId": issued.upload.id, "key": issued.upload.key,
                "uploadUrl": issued.put.url, "method": "PUT", "headers": issued.put.headers,
                "expiresAt": issued.upload.url_expires_at, "maxBytes": issued.max_bytes}


@blp.route("/confirm")
class Confirm(MethodView):
    @blp.arguments(ConfirmRequestSchema)
    @blp.response(202, UploadSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Tell the API the upload finished; validation continues in the background"""
        meta = body.get("metadata") or {}
        upload = uploads.confirm(app_services().svc, current_user_id(), body["key"],
                                 width=meta.get("width"), height=meta.get("height"))
        return _view(upload)


@blp.route("")
class UploadList(MethodView):
    @list_endpoint(blp, UploadListArgsSchema, UploadListSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """The caller's uploads, newest first, in cursor pages"""
        return listed(uploads.list_for_user, _view, args)


@blp.route("/<upload_id:upload_id>")
class UploadItem(MethodView):
    @blp.response(200, UploadSchema)
    def get(self, upload_id: str) -> dict[str, Any]:
        """One upload (poll it until `ready` or `rejected`); 404 once deleted"""
        return _view(uploads.get(app_services().svc, current_user_id(), upload_id))

    @blp.response(204)
    def delete(self, upload_id: str) -> None:
        """Delete the selfie's objects now and mark the upload deleted"""
        uploads.delete(app_services().svc, current_user_id(), upload_id)

