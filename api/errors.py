"""The one place where failures become HTTP responses.

Every error body is `{"error": {code, messageKey, message, retriable,
correlationId}}`, localized; never a stack trace, a signed URL or a bucket name.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from shared.core import metrics
from shared.core.errors import ERROR_KINDS, AppError
from shared.core.i18n import message_key, normalize_locale, translate
from shared.storage.base import StorageUnavailable

log = logging.getLogger(__name__)

_HTTP_CODES = {401: "auth.missing_token", 404: "request.not_found",
               405: "request.method_not_allowed", 413: "request.too_large",
               415: "upload.unsupported_type", 422: "request.invalid",
               400: "request.invalid"}


def request_locale() -> str:
    """The request's `locale` (query, else the body's as its one parse found it, in
    api/boundary.py), else Accept-Language, else English. Never reads the body: an
    error handler that parsed it again would fail on the very body it reports."""
    explicit = request.args.get("locale")
    if explicit is None:
        explicit = g.get("body_locale")
    return (normalize_locale(explicit)
            or request.accept_languages.best_match(["en", "es"]) or "en")


def error_object(code: str, locale: str) -> dict[str, Any]:
    """The inner error object (also used for an upload's `rejection`)."""
    kind = ERROR_KINDS.get(code)
    return {"code": code, "messageKey": message_key(code), "message": translate(code, locale),
            "retriable": bool(kind and kind.retriable)}


# Sent when building an answer failed itself: fixed bytes, built at import.
_LAST_RESORT = json.dumps({"error": {
    "code": "internal.error", "messageKey": message_key("internal.error"),
    "message": translate("internal.error", "en"), "retriable": True,
    "correlationId": None}}).encode()


def last_resort_response() -> Response:
    response = Response(_LAST_RESORT, status=500, mimetype="application/json")
    response.headers["X-Request-ID"] = g.get("correlation_id", "")
    return response


def error_response(code: str, status: int | None = None, *, retry_after: int | None = None,
                   details: Any = None) -> Response:
    try:
        return _error_response(code, status, retry_after=retry_after, details=details)
    except Exception:
        log.exception("building the error answer failed")
        return last_resort_response()


def _error_response(code: str, status: int | None, *, retry_after: int | None,
                    details: Any) -> Response:
    body = error_object(code, request_locale())
    body["correlationId"] = g.get("correlation_id")
    if details is not None:
        body["details"] = details
    response = jsonify({"error": body})
    response.status_code = status or ERROR_KINDS[code].status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    metrics.API_ERRORS.labels(code=code).inc()
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    def _app_error(exc: AppError) -> Response:
        if exc.detail:
            log.info("request failed: %s (%s)", exc.code, exc.detail)
        return error_response(exc.code, retry_after=exc.retry_after, details=exc.fields)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 304:
            # flask-smorest's conditional GET: not an error. The current ETag (not the
            # request's If-None-Match, which may be `*` or a list) still holds, and so
            # does the polling hint the full answer would carry.
            response = Response(status=304)
            if g.get("etag"):
                response.set_etag(g.etag)
            if g.get("retry_after"):
                response.headers["Retry-After"] = str(g.retry_after)
            return response
        code = _HTTP_CODES.get(status, "internal.error" if status >= 500 else "request.invalid")
        details = None
        data = getattr(exc, "data", None)
        if isinstance(data, dict) and "messages" in data:
            details = data["messages"]  # webargs field errors: names, not values
        response = error_response(code, status, details=details)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # RFC 9110 §15.5.6
        return response

    @app.errorhandler(StorageUnavailable)
    @app.errorhandler(RedisError)
    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeoutError)  # no free pooled connection: not an OperationalError
    def _dependency_down(exc: Exception) -> Response:
        log.warning("dependency unavailable: %s", type(exc).__name__)
        return error_response("service.unavailable", retry_after=5)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response("internal.error")
