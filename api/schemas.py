"""Schema conventions shared by every resource: camelCase on the wire, unknown
fields in bodies rejected (a typo should be an error, not silently ignored)."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields


class BaseSchema(Schema):
    class Meta:
        unknown = RAISE
        ordered = True


class ErrorObjectSchema(BaseSchema):
    code = fields.String(required=True)
    messageKey = fields.String(required=True)  # noqa: N815 - wire name
    message = fields.String(required=True)
    retriable = fields.Boolean(required=True)
    correlationId = fields.String(allow_none=True)  # noqa: N815


class ErrorSchema(BaseSchema):
    error = fields.Nested(ErrorObjectSchema, required=True)


class PageArgsSchema(BaseSchema):
    limit = fields.Integer(load_default=20, validate=lambda n: 1 <= n <= 100)
    cursor = fields.String(load_default=None)
    locale = fields.String(load_default=None)
