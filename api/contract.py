"""The OpenAPI document as an exact contract (docs/openapi.json is its reviewed copy).

flask-smorest documents its own error body; ours is api/errors.py's envelope, so the
`Error` component replaces it, and every operation lists each status it can answer
with the stable codes behind it (`x-error-codes`), the headers it sends and the
security it needs. One table below, read by an apispec plugin, keeps all of it in
one place.
"""

from __future__ import annotations

import json
from typing import Any

from apispec import BasePlugin
from flask import Flask
from flask_smorest import Api
from werkzeug.routing import BaseConverter

from api.examples import EXAMPLES
from api.schemas import ErrorSchema
from shared.access.idempotency import MAX_KEY_LENGTH
from shared.core.errors import ERROR_KINDS
from shared.core.i18n import message_key, translate

ERROR_REF = {"$ref": "#/components/schemas/Error"}
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"description": "The request's correlation id (yours if you sent a "
                                    "plain token of up to 64 characters, else ours)",
                     "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before asking again",
                    "schema": {"type": "integer", "minimum": 0}},
    "Allow": {"description": "The methods the path answers (RFC 9110 §10.2.1)",
              "schema": {"type": "string"}, "example": "POST"},
}
_REQUEST_ID = {"$ref": "#/components/headers/X-Request-ID"}
_RETRY_AFTER = {"$ref": "#/components/headers/Retry-After"}
_ALLOW = {"$ref": "#/components/headers/Allow"}
# Codes answered with a Retry-After besides every 429 and 503.
RETRY_HINTED = {"idempotency.in_progress"}

_AUTH = ("auth.missing_token", "auth.invalid_token", "auth.expired_token")
# What the HTTP server answers for any route (api/gunicorn_worker.py), what any bearer
# route may answer (a query parameter given twice is 422 on each, api/context.py), what
# a JSON body or query arguments add.
_SERVER = ((400, "request.invalid"), "request.uri_too_long", "request.headers_too_large")
_BEARER = (*_AUTH, "rate.limited", "service.unavailable", "internal.error",
           (422, "request.invalid"))
_BODY = ((413, "request.too_large"), (422, "request.invalid"))  # 400 (not JSON): _SERVER
_QUERY = ((422, "request.invalid"),)

# (method, path) -> the codes the operation can answer beyond the common ones; a pair
# (status, code) for a code answered with another status than its own kind's.
OPERATION_ERRORS: dict[tuple[str, str], tuple[Any, ...]] = {
    ("post", "/v1/uploads/presign"): (*_BODY, "upload.too_large", "upload.unsupported_type",
                                      "user.erasure_in_progress", "quota.exceeded"),
    ("post", "/v1/uploads/confirm"): (*_BODY, "upload.forbidden_key", "upload.not_found",
                                      "upload.object_missing", "upload.already_confirmed",
                                      "upload.expired", "upload.size_mismatch",
                                      "upload.type_mismatch", "upload.checksum_mismatch"),
    ("get", "/v1/uploads"): _QUERY,
    # 405: the segment is an action's name (/v1/uploads/presign is POST only).
    ("get", "/v1/uploads/{upload_id}"): ("upload.not_found", "request.method_not_allowed"),
    ("delete", "/v1/uploads/{upload_id}"): ("upload.not_found", "request.method_not_allowed"),
    ("post", "/v1/try-ons"): (*_BODY, "upload.forbidden_key", "upload.not_found",
                              "idempotency.conflict", "idempotency.in_progress",
                              "user.erasure_in_progress", "upload.not_ready",
                              "tryon.unknown_hairstyle", "upload.rejected", "quota.exceeded"),
    ("get", "/v1/try-ons"): _QUERY,
    ("get", "/v1/try-ons/{job_id}"): ("tryon.not_found",),
    ("delete", "/v1/try-ons/{job_id}"): ("tryon.not_found",),
    ("put", "/v1/try-ons/{job_id}/favorite"): ("tryon.not_found", "tryon.no_result"),
    ("delete", "/v1/try-ons/{job_id}/favorite"): ("tryon.not_found", "tryon.no_result"),
    ("get", "/v1/hairstyles"): _QUERY,
    ("delete", "/v1/me"): (),
    ("get", "/v1/me/erasure"): ("erasure.not_found",),
    # 422: signed by fal, yet past our JSON limits (api/boundary.py).
    ("post", "/v1/webhooks/fal"): (*_BODY, "webhook.invalid", "service.unavailable",
                                   "internal.error"),
}
PUBLIC_OPERATIONS = {("post", "/v1/webhooks/fal")}
# Answers that carry Retry-After besides 429 and 503 (the polling hint).
POLLED = {("post", "/v1/try-ons"): "202", ("get", "/v1/try-ons/{job_id}"): "200"}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": f"Any string you choose per tap, 1 to {MAX_KEY_LENGTH} visible ASCII "
                   "characters (a longer one is refused with 422 `request.invalid`, never "
                   "truncated): the same key with the same body within 24 h returns the "
                   "original answer, with another body 409 `idempotency.conflict`.",
    "schema": {"type": "string", "maxLength": MAX_KEY_LENGTH, "pattern": "^[ -~]*$"},
    "example": "tap-7d0c2f",
}


def error_codes(method: str, path: str) -> dict[int, list[str]]:
    """Status -> the stable codes `method path` can answer with it."""
    entries: list[Any] = [*OPERATION_ERRORS[(method, path)], *_SERVER]
    if (method, path) not in PUBLIC_OPERATIONS:
        entries += list(_BEARER)
    by_status: dict[int, list[str]] = {}
    for entry in entries:
        status, code = entry if isinstance(entry, tuple) else (ERROR_KINDS[entry].status, entry)
        codes = by_status.setdefault(status, [])
        if code not in codes:
            codes.append(code)
    return dict(sorted(by_status.items()))


def _error_response(status: int, codes: list[str]) -> dict[str, Any]:
    headers = {"X-Request-ID": _REQUEST_ID}
    if status in (429, 503) or RETRY_HINTED.intersection(codes):
        headers["Retry-After"] = _RETRY_AFTER
    if status == 405:
        headers["Allow"] = _ALLOW
    listed = ", ".join(f"`{c}`" for c in codes)
    example = {"error": {"code": codes[0], "messageKey": message_key(codes[0]),
                         "message": translate(codes[0], "en"),
                         "retriable": ERROR_KINDS[codes[0]].retriable,
                         "correlationId": "9c1f2a7e4b5d4e0f8a1b2c3d4e5f6a7b"}}
    return {"description": f"Error envelope; `error.code` is one of {listed}",
            "headers": headers, "x-error-codes": codes,
            "content": {"application/json": {"schema": ERROR_REF, "example": example}}}




def _operation_ref(method: str, path: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


_UPLOAD = "/v1/uploads/{upload_id}"
_TRYON = "/v1/try-ons/{job_id}"
# Where an answer's ids lead (OpenAPI links): generated clients and schemathesis'
# stateful phase follow them from a create to its read, favorite and delete.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("post", "/v1/uploads/presign", "201"): {
        "GetUpload": ("get", _UPLOAD, {"upload_id": "$response.body#/uploadId"}),
        "DeleteUpload": ("delete", _UPLOAD, {"upload_id": "$response.body#/uploadId"}),
    },
    ("post", "/v1/uploads/confirm", "202"): {
        "GetUpload": ("get", _UPLOAD, {"upload_id": "$response.body#/uploadId"}),
    },
    ("post", "/v1/try-ons", "202"): {
        "GetTryOn": ("get", _TRYON, {"job_id": "$response.body#/jobId"}),
        "FavoriteTryOn": ("put", _TRYON + "/favorite", {"job_id": "$response.body#/jobId"}),
        "DeleteTryOn": ("delete", _TRYON, {"job_id": "$response.body#/jobId"}),
    },
    ("get", _TRYON, "200"): {
        "GetUpload": ("get", _UPLOAD, {"upload_id": "$response.body#/uploadId"}),
        "DeleteTryOn": ("delete", _TRYON, {"job_id": "$response.body#/jobId"}),
    },
}


def _links(method: str, path: str, status: str) -> dict[str, Any]:
    return {name: {"operationRef": _operation_ref(to_method, to_path), "parameters": params}
            for name, (to_method, to_path, params) in LINKS.get((method, path, status), {}).items()}


# Rules of a body that marshmallow checks in code (validates_schema), for the document.
SCHEMA_RULES: dict[str, dict[str, Any]] = {
    # TryOnRequestSchema._one_source: exactly one of key and uploadId, non-empty.
    "TryOnRequest": {"oneOf": [
        {"required": ["key"], "properties": {"key": {"type": "string", "minLength": 1}}},
        {"required": ["uploadId"], "properties": {"uploadId": {"type": "string",
                                                               "minLength": 1}}},
    ]},
}


class ContractPlugin(BasePlugin):
    """Adds to each operation its error answers, headers and security."""

    def schema_helper(self, name: str, definition: dict[Any, Any],
                      **kwargs: Any) -> dict[Any, Any] | None:
        for field in definition.get("properties", {}).values():
            # apispec writes a nullable nested schema for OpenAPI 3.0 as anyOf
            # [{object, nullable}, $ref]; generated clients try the members in order,
            # and the loose object would swallow the typed one.
            branches = field.get("anyOf", [])
            if len(branches) == 2 and "$ref" in branches[1]:
                field["anyOf"] = [branches[1], branches[0]]
        extra = {**SCHEMA_RULES.get(name, {})}
        if name in EXAMPLES:
            extra["example"] = EXAMPLES[name]
        return extra or None

    def operation_helper(self, path: str | None = None, operations: dict[Any, Any] | None = None,
                         **kwargs: Any) -> None:
        assert path is not None and operations is not None
        for method, operation in operations.items():
            key = (method, path)
            if key not in OPERATION_ERRORS:
                raise KeyError(f"{method} {path} is not in api/contract.py OPERATION_ERRORS")
            # flask-smorest keys some statuses by int (304), ours are strings.
            responses = {str(s): r for s, r in operation.setdefault("responses", {}).items()}
            operation["responses"] = responses
            for answered in [s for s in responses if int(s) >= 400]:
                del responses[answered]
            for error_status, codes in error_codes(method, path).items():
                responses[str(error_status)] = _error_response(error_status, codes)
            for status, response in responses.items():
                if isinstance(response, dict) and int(status) < 400:
                    headers = response.setdefault("headers", {})
                    headers["X-Request-ID"] = _REQUEST_ID
                    if POLLED.get(key) == str(status):
                        headers["Retry-After"] = _RETRY_AFTER
                    if links := _links(method, path, str(status)):
                        response["links"] = links
            if key in POLLED and "304" in responses:
                responses["304"] = {"description": "Not modified: the ETag you sent still "
                                                   "holds, and so do the URLs you have",
                                    "headers": {"ETag": "ETAG", "X-Request-ID": _REQUEST_ID,
                                                "Retry-After": _RETRY_AFTER}}
            if key == ("post", "/v1/try-ons"):
                operation.setdefault("parameters", []).append(IDEMPOTENCY_KEY)
            operation["security"] = [] if key in PUBLIC_OPERATIONS else [{"bearerAuth": []}]


UPLOAD_ACTIONS = ("presign", "confirm")


class UploadIdConverter(BaseConverter):
    """`<upload_id:…>`: any path segment but the names of the uploads' actions, so that
    /v1/uploads/presign is POST only (a GET there is 405, not a lookup of an upload
    called "presign"). Every other id is looked up, and answers 404 when unknown."""

    regex = "(?!(?:" + "|".join(UPLOAD_ACTIONS) + ")$)[^/]+"


def _upload_id_parameter(_converter: BaseConverter) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "not": {"enum": list(UPLOAD_ACTIONS)},
            "example": "0b7f6c1e-3a2d-4c5b-9e8f-112233445566"}


class DocumentedApi(Api):
    """flask-smorest's Api with our error envelope as the documented error body."""

    ERROR_SCHEMA = ErrorSchema
    DEFAULT_ERROR_RESPONSE_NAME = None

    def init_app(self, app: Flask, *, spec_kwargs: dict[str, Any] | None = None) -> None:
        app.url_map.converters["upload_id"] = UploadIdConverter
        super().init_app(app, spec_kwargs=spec_kwargs)
        self.register_converter(UploadIdConverter, _upload_id_parameter)

    def _init_spec(self, **kwargs: Any) -> None:
        kwargs["extra_plugins"] = [*kwargs.get("extra_plugins", ()), ContractPlugin()]
        super()._init_spec(**kwargs)
        assert self.spec is not None
        # flask-smorest registered ERROR_SCHEMA lazily: referenced here, it is emitted.
        self.spec.components.get_ref("schema", "Error")
        for name, header in HEADERS.items():
            self.spec.components.header(name, header)


def document(app: Flask) -> dict[str, Any]:
    """The served document, as a dict."""
    with app.test_request_context():
        return app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec.to_dict()


def document_text(app: Flask) -> str:
    """docs/openapi.json's exact text: sorted keys, indented."""
    return json.dumps(document(app), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
