"""Per-request concerns: correlation id, client IP, rate limits and the caller.

Authentication is a before_request hook for every /v1 route but the fal webhook,
so no view can forget it; views read the caller with `current_user_id()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_smorest import Blueprint
from marshmallow import Schema

from api.boundary import check_query
from shared.access.auth import KeysUnavailable, TokenError, TokenVerifier
from shared.access.quota import QuotaService
from shared.core.errors import AppError
from shared.core.observability import (
    accept_or_make_correlation_id,
    reset_correlation_id,
    set_correlation_id,
)
from shared.core.pagination import Page
from shared.fal.webhooks import FalWebhookVerifier
from shared.services import Services

PUBLIC_PREFIXES = ("/v1/webhooks/",)


def current_user_id() -> str:
    return str(g.user_id)


def install(app: Flask, verifier: TokenVerifier, quotas: QuotaService) -> None:
    @app.before_request
    def _begin() -> None:
        g.correlation_id = accept_or_make_correlation_id(request.headers.get("X-Request-ID"))
        g.correlation_token = set_correlation_id(g.correlation_id)
        if not request.path.startswith("/v1/"):
            return
        if request.path.startswith(PUBLIC_PREFIXES):
            # Signature-verified callbacks: throttling them would only make fal retry.
            return
        ip = request.remote_addr or "unknown"  # ProxyFix has applied X-Forwarded-For
        quotas.check_ip_rate(ip)
        g.user_id = _authenticate(verifier)
        quotas.check_user_rate(g.user_id)
        if any(len(values) > 1 for values in request.args.listvalues()):
            # Every documented query parameter is one value; which of two would count?
            raise AppError("request.invalid", detail="query parameter repeated")
        check_query()

    @app.after_request
    def _end(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("correlation_id", "")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.teardown_request
    def _teardown(_exc: BaseException | None) -> None:
        token = g.pop("correlation_token", None)
        if token is not None:
            reset_correlation_id(token)


def _authenticate(verifier: TokenVerifier) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise AppError("auth.missing_token")
    if scheme.lower() != "bearer" or not token.strip():
        raise AppError("auth.invalid_token")
    try:
        return verifier.verify(token.strip()).user_id
    except TokenError as exc:
        raise AppError(exc.code) from None
    except KeysUnavailable as exc:
        # Our side cannot check tokens now (the JWKS is down, or a key just rotated in
        # is being fetched): retriable, so the app keeps its session.
        raise AppError("service.unavailable", retry_after=exc.retry_after) from None


EXTENSION = "hairfluencer"


@dataclass(frozen=True)
class AppServices:
    """What the app was built with; views reach it only through `app_services()`."""

    svc: Services
    quotas: QuotaService
    fal_webhooks: FalWebhookVerifier


def app_services() -> AppServices:
    return current_app.extensions[EXTENSION]


def listed(list_for_user: Callable[..., Page[Any]], view: Callable[[Any], dict[str, Any]],
           args: dict[str, Any]) -> dict[str, Any]:
    """One page of the caller's rows, as the list endpoints answer it."""
    page = list_for_user(app_services().svc, current_user_id(), limit=args["limit"],
                         cursor=args["cursor"], status=args["status"])
    return {"items": [view(row) for row in page.items], "nextCursor": page.next_cursor}


def list_endpoint(blp: Blueprint, args_schema: type[Schema],
                  page_schema: type[Schema]) -> Callable[[Callable[..., Any]], Any]:
    """A list endpoint: page arguments from the query, one page of items back."""
    def register(view: Callable[..., Any]) -> Any:
        return blp.arguments(args_schema, location="query")(blp.response(200, page_schema)(view))
    return register
