"""Liveness, readiness and metrics for operations (no auth, no rate limit)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from api.context import app_services
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
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # read by prometheus-client itself
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest()
    return Response(text + generate_latest(_broker_registry()), mimetype=CONTENT_TYPE_LATEST)


class QueueLengths(Collector):
    """`celery_queue_length{queue}`, read from the broker at scrape time (a gauge that
    no process holds: any API process answers it alike). A broker that does not answer
    leaves it out and sets `celery_queue_length_up` to 0, never failing the scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("celery_queue_length_up",
                               "1 if the broker answered the queue-length read")
        try:
            lengths = queue_lengths()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail on the broker
            log.warning("queue lengths unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        gauge = GaugeMetricFamily("celery_queue_length", "Messages waiting in a queue",
                                  labels=["queue"])
        for queue, length in lengths.items():
            gauge.add_metric([queue], length)
        yield gauge
        yield up


def _broker_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueLengths())
    return registry
