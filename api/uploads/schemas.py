"""Wire shapes of the uploads resource (SPEC §3)."""

from __future__ import annotations

from typing import Any

from marshmallow import fields, validate

from api.schemas import BaseSchema, PageArgsSchema, text
from shared.storage.keys import EXTENSIONS

UPLOAD_STATUSES = ["pending", "validating", "ready", "rejected", "expired", "deleted"]
MAX_UPLOAD_BYTES = 16 * 1024 * 1024  # the default of the setting (SPEC §3)


class PresignRequestSchema(BaseSchema):
    # Type and size are checked in the domain so that they answer 415/413
    # rather than a generic 422.
    # The document states the bounds (metadata); the domain enforces them.
    contentType = fields.String(required=True, validate=validate.Length(max=100), metadata={  # noqa: N815
        "enum": list(EXTENSIONS), "example": "image/jpeg",
        "description": "Another type answers 415 `upload.unsupported_type`"})
    contentLength = fields.Integer(required=True, strict=True, metadata={  # noqa: N815
        "minimum": 1, "maximum": MAX_UPLOAD_BYTES, "example": 482133,
        "description": "Bytes; above the limit 413 `upload.too_large`"})
    checksum = fields.String(load_default=None, validate=validate.Length(max=64), metadata={
        "pattern": "^[A-Za-z0-9+/]{43}=$", "description": "base64 of the SHA-256 of the bytes",
        "example": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="})
    locale = text(load_default=None, validate=validate.Length(max=16))


class PresignResponseSchema(BaseSchema):
    uploadId = fields.String(required=True)  # noqa: N815
    key = fields.String(required=True)
    uploadUrl = fields.String(required=True)  # noqa: N815
    method = fields.String(required=True, metadata={"enum": ["PUT"]})
    headers = fields.Dict(keys=fields.String(), values=fields.String(), required=True, metadata={
        "description": "The exact headers the PUT must send (they are signed into the URL): "
                       "Content-Type, Content-Length, If-None-Match: *, and "
                       "x-amz-checksum-sha256 when a checksum was given; no others",
        "example": {"Content-Type": "image/jpeg", "Content-Length": "482133",
                    "If-None-Match": "*"}})
    expiresAt = fields.DateTime(required=True)  # noqa: N815
    maxBytes = fields.Integer(required=True)  # noqa: N815


class ConfirmMetadataSchema(BaseSchema):
    width = fields.Integer(load_default=None, validate=validate.Range(min=1, max=100_000))
    height = fields.Integer(load_default=None, validate=validate.Range(min=1, max=100_000))


class ConfirmRequestSchema(BaseSchema):
    key = text(required=True, validate=validate.Length(min=1, max=255))
    eTag = text(load_default=None, validate=validate.Length(max=200))  # noqa: N815
    metadata = fields.Nested(ConfirmMetadataSchema, load_default=dict)
    locale = text(load_default=None, validate=validate.Length(max=16))


class RejectionSchema(BaseSchema):
    code = fields.String(required=True)
    messageKey = fields.String(required=True)  # noqa: N815
    message = fields.String(required=True)


class UploadSchema(BaseSchema):
    uploadId = fields.String(required=True)  # noqa: N815
    key = fields.String(required=True)
    status = fields.String(required=True, metadata={"enum": UPLOAD_STATUSES})
    contentType = fields.String(required=True)  # noqa: N815
    sizeBytes = fields.Integer(required=True)  # noqa: N815
    # Always sent, null until known: required in the document, so that generated
    # clients type them as present.
    width = fields.Integer(required=True, allow_none=True)
    height = fields.Integer(required=True, allow_none=True)
    createdAt = fields.DateTime(required=True)  # noqa: N815
    deleteAfter = fields.DateTime(required=True)  # noqa: N815
    rejection = fields.Nested(RejectionSchema, required=True, allow_none=True)


class UploadListSchema(BaseSchema):
    items = fields.List(fields.Nested(UploadSchema), required=True)
    nextCursor = fields.String(required=True, allow_none=True)  # noqa: N815


class UploadListArgsSchema(PageArgsSchema):
    status = fields.String(load_default=None, validate=validate.OneOf(UPLOAD_STATUSES))


def upload_view(upload: Any, rejection: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "uploadId": upload.id, "key": upload.key, "status": upload.status,
        "contentType": upload.content_type,
        "sizeBytes": upload.size_bytes if upload.size_bytes is not None else upload.declared_size,
        "width": upload.width, "height": upload.height, "createdAt": upload.created_at,
        "deleteAfter": upload.delete_after, "rejection": rejection,
    }
