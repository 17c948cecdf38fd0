"""Wire shapes of try-ons, hairstyles and the fal webhook (SPEC §3)."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate, validates_schema

from api.schemas import BaseSchema, PageArgsSchema, text
from shared.tryons.hairstyles import MAX_USER_PROMPT, catalogue

JOB_STATUSES = ["queued", "processing", "succeeded", "failed"]


class TryOnRequestSchema(BaseSchema):
    key = text(load_default=None, validate=validate.Length(max=255))
    uploadId = text(load_default=None, validate=validate.Length(max=64))  # noqa: N815
    hairstyleId = fields.String(required=True, validate=validate.Length(min=1, max=64), metadata={  # noqa: N815
        "enum": list(catalogue()), "example": "bob",
        "description": "An id of GET /v1/hairstyles; another answers 422 "
                       "`tryon.unknown_hairstyle`"})
    prompt = text(load_default=None, validate=validate.Length(max=MAX_USER_PROMPT))
    locale = fields.String(load_default=None, validate=validate.OneOf(["en", "es"]))

    @validates_schema
    def _one_source(self, data: dict[str, object], **_: object) -> None:
        if bool(data.get("key")) == bool(data.get("uploadId")):
            raise ValidationError("give exactly one of key or uploadId", "key")


class JobErrorSchema(BaseSchema):
    code = fields.String(required=True)
    messageKey = fields.String(required=True)  # noqa: N815
    message = fields.String(required=True)
    retriable = fields.Boolean(required=True)


class TryOnSchema(BaseSchema):
    jobId = fields.String(required=True)  # noqa: N815
    status = fields.String(required=True, validate=validate.OneOf(JOB_STATUSES))
    hairstyleId = fields.String(required=True)  # noqa: N815
    uploadId = fields.String(required=True)  # noqa: N815
    createdAt = fields.DateTime(required=True)  # noqa: N815
    updatedAt = fields.DateTime(required=True)  # noqa: N815
    favorite = fields.Boolean(required=True)
    resultUrl = fields.String()  # noqa: N815
    thumbnailUrl = fields.String()  # noqa: N815
    urlsExpireAt = fields.DateTime()  # noqa: N815
    deleteAfter = fields.DateTime(required=True, allow_none=True)  # noqa: N815 - null: favorite
    error = fields.Nested(JobErrorSchema)


class TryOnListSchema(BaseSchema):
    items = fields.List(fields.Nested(TryOnSchema), required=True)
    nextCursor = fields.String(required=True, allow_none=True)  # noqa: N815


class TryOnListArgsSchema(PageArgsSchema):
    status = fields.String(load_default=None, validate=validate.OneOf(JOB_STATUSES))


class HairstyleSchema(BaseSchema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    names = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class HairstyleListSchema(BaseSchema):
    items = fields.List(fields.Nested(HairstyleSchema), required=True)


class LocaleArgsSchema(BaseSchema):
    locale = text(load_default=None)
