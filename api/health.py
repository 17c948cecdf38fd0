"""Liveness, readiness and metrics for operations (no auth, no rate limit)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, abort, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from sqlalchemy import text

from api.context import app_services
from shared.core.metrics_server import QueueLengths, multiprocess_dir, multiprocess_registry
from shared.core.tasks import ping_broker, queue_lengths

log = logging.getLogger(__name__)
blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@blp.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks = {"database": _check_database, "redis": _check_redis, "storage": _check_storage}
    if app_services().svc.settings.celery_broker_url != app_services().svc.settings.redis_url:
        checks["broker"] = _check_broker
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("readiness check %s failed: %s", name, type(exc).__name__)
            results[name] = "unavailable"
    ready = all(v == "ok" for v in results.values())
    return jsonify({"status": "ready" if ready else "unavailable", "checks": results}), (
        200 if ready else 503)


def _check_database() -> None:
    with app_services().svc.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_redis() -> None:
    app_services().quotas.ping()


def _check_broker() -> None:
    ping_broker()


def _check_storage() -> None:
    svc = app_services().svc
    svc.upload_store.ping()
    svc.result_store.ping()


@blp.get("/metrics")
def metrics() -> Response:
    if app_services().svc.settings.metrics_port:
        # The API's metrics are on METRICS_PORT, served by gunicorn's master
        # (api/gunicorn_conf.py), never on the published port.
        abort(404)
    directory = multiprocess_dir()
    text = generate_latest(multiprocess_registry(directory) if directory else REGISTRY)
    return Response(text + generate_latest(_broker_registry()), mimetype=CONTENT_TYPE_LATEST)


def _broker_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueLengths(queue_lengths))
    return registry
