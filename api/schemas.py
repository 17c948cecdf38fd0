"""Schema conventions shared by every resource: camelCase on the wire, unknown
fields in bodies rejected (a typo should be an error, not silently ignored)."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from shared.core.errors import ERROR_KINDS
from shared.core.pagination import CURSOR_PATTERN, MAX_PAGE
from shared.core.text import STORABLE_PATTERN


def text(**kwargs: Any) -> fields.String:
    """A string the client sends that we store, look up or compare. The document
    states the code points refused with 422 (NUL, lone surrogates, non-characters:
    shared/core/text.py), which api/boundary.py checks before any schema runs."""
    metadata = {"pattern": STORABLE_PATTERN, **kwargs.pop("metadata", {})}
    return fields.String(metadata=metadata, **kwargs)


class BaseSchema(Schema):
    class Meta:
        unknown = RAISE
        ordered = True


class ErrorObjectSchema(BaseSchema):
    """Exactly what api/errors.py sends (`details` only for schema errors)."""

    code = fields.String(required=True, metadata={
        "enum": sorted(ERROR_KINDS), "description": "Stable and dotted; see each answer's "
        "`x-error-codes` for the codes an operation can return"})
    messageKey = fields.String(required=True, metadata={  # noqa: N815 - wire name
        "description": "`errors.` + code, stable for the app's own strings"})
    message = fields.String(required=True, metadata={"description": "Localized (en, es)"})
    retriable = fields.Boolean(required=True)
    correlationId = fields.String(required=True, allow_none=True)  # noqa: N815
    details = fields.Dict(keys=fields.String(), metadata={
        "description": "Schema errors only: where (json, query) -> field -> messages"})


class ErrorSchema(BaseSchema):
    error = fields.Nested(ErrorObjectSchema, required=True)


class PageArgsSchema(BaseSchema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=MAX_PAGE))
    # The pattern is the cursor's whole format: every string matching it decodes.
    cursor = fields.String(load_default=None, metadata={
        "pattern": CURSOR_PATTERN, "description": "A page's `nextCursor`, sent back as is",
        "example": "1764595009123456.0b7f6c1e-3a2d-4c5b-9e8f-112233445566"})
    locale = text(load_default=None)
