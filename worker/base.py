"""The task base every task uses: it carries the correlation id from the sender,
times the task, and holds the process's Services, so each task body is one call."""

from __future__ import annotations

import time
from functools import cached_property
from typing import Any

from celery import Task

from shared.core import metrics
from shared.core.config import get_settings
from shared.core.observability import reset_correlation_id, set_correlation_id
from shared.core.tasks import CORRELATION_HEADER, SENT_AT_HEADER
from shared.services import Services

_services: Services | None = None


def services() -> Services:
    """One Services per worker process, built on first use (after fork)."""
    global _services
    if _services is None:
        _services = Services.from_settings(get_settings())
    return _services


def use_services(svc: Services | None) -> None:
    """Tests call task bodies with their own Services."""
    global _services
    _services = svc


class AppTask(Task):  # type: ignore[misc]
    abstract = True
    acks_late = True
    ignore_result = True

    @cached_property
    def svc(self) -> Services:
        return services()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        headers = getattr(self.request, "headers", None) or {}
        token = set_correlation_id(headers.get(CORRELATION_HEADER) or self.request.id)
        sent_at = headers.get(SENT_AT_HEADER)
        if isinstance(sent_at, int | float):
            metrics.QUEUE_LATENCY.labels(task=self.name).observe(max(0.0, time.time() - sent_at))
        started = time.perf_counter()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            metrics.TASK_DURATION.labels(task=self.name).observe(time.perf_counter() - started)
            reset_correlation_id(token)
