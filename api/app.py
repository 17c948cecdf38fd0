"""The Flask application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sentry_sdk.integrations.flask import FlaskIntegration
from werkzeug.middleware.proxy_fix import ProxyFix

from api import context, docs_ui, health, me, webhooks
from api.contract import DocumentedApi
from api.errors import register_error_handlers
from api.tryons.resources import blp as tryons_blp
from api.uploads.resources import blp as uploads_blp
from shared.access.auth import TokenVerifier
from shared.access.idempotency import IdempotencyStore
from shared.access.quota import QuotaService
from shared.core.config import Settings, get_settings
from shared.core.observability import configure_logging, init_sentry
from shared.fal.webhooks import FalWebhookVerifier
from shared.services import Services

API_CONFIG: dict[str, Any] = {
    "API_TITLE": "Hairfluencer API",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "/docs",
    # Swagger UI's files come from the swagger-ui-bundle package, served by the
    # app (api/docs_ui.py): /docs works with no CDN and no way out of the network.
    "OPENAPI_SWAGGER_UI_URL": docs_ui.ASSETS_URL,
    "OPENAPI_SWAGGER_UI_CONFIG": {"validatorUrl": None},  # no badge from validator.swagger.io
    "API_SPEC_OPTIONS": {
        "components": {"securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        "security": [{"bearerAuth": []}],
    },
}


def create_app(settings: Settings | None = None, svc: Services | None = None,
               quotas: QuotaService | None = None, *, configure_logs: bool = True) -> Flask:
    settings = settings or get_settings()
    if configure_logs:
        configure_logging(settings.log_level)
        init_sentry(settings.sentry_dsn, settings.env, [FlaskIntegration()])
    app = Flask(__name__)
    app.config.update(API_CONFIG)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # JSON bodies only; images go to S3
    if settings.trusted_proxy_count:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_count)  # type: ignore[method-assign]
    svc = svc or Services.from_settings(settings)
    quotas = quotas or QuotaService(
        settings.redis_url, presign_daily=settings.presign_daily_quota,
        user_rate=settings.user_rate, ip_rate=settings.ip_rate,
        tryon_daily=settings.tryon_daily_quota, redis_timeout=settings.redis_timeout_seconds)
    # One store for the API's replays and the domain's erasure (same Redis namespace).
    svc.idempotency = IdempotencyStore(quotas.redis_url, quotas.namespace,
                                       redis_timeout=quotas.redis_timeout)
    app.extensions[context.EXTENSION] = context.AppServices(
        svc=svc, quotas=quotas, fal_webhooks=FalWebhookVerifier(settings.fal_webhook_jwks_url))

    api = DocumentedApi(app)
    api.register_blueprint(uploads_blp)
    api.register_blueprint(tryons_blp)
    api.register_blueprint(webhooks.blp)
    api.register_blueprint(me.blp)
    app.register_blueprint(health.blp)
    app.register_blueprint(docs_ui.blp)
    context.install(app, TokenVerifier(settings), quotas)
    register_error_handlers(app)
    return app
