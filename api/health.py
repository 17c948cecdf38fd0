"""Liveness, readiness and metrics for operations (no auth, no rate limit)."""

from __future__ import annotations

import logging
import os

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy import text

from api.context import app_services
from shared.core.tasks import ping_broker

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
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # read by prometheus-client itself
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
