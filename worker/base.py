"""The one task base and decorator every task uses.

The base carries the correlation id from the sender, times the task, and hands
each task the process's Services, so every task body is one domain call. Names
and queues come from shared/core/task_names.py (queues through celeryconfig's
routes); delivery options are stated here once per kind of task.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Task, signals

from shared.core import metrics
from shared.core.config import get_settings
from shared.core.observability import (
    reset_correlation_id,
    set_correlation_id,
)
from shared.core.tasks import CORRELATION_HEADER, SENT_AT_HEADER, celery_app
from shared.services import DEPENDENCY_FAILURES, Services

# Dependencies that come back: storage, clamd, the database (a restart, a killed
# connection), Redis. The work is idempotent by the state it checks first.
TRANSIENT = DEPENDENCY_FAILURES  # declared once, in the composition root

_services: Services | None = None
_building = threading.Lock()


def services() -> Services:
    """One Services per worker process, built on first use (after fork). Locked: a
    threads pool's first burst would otherwise build one per thread, each with its
    own database pool and S3 clients (~120 ms of CPU apiece), all but one discarded."""
    global _services
    if _services is None:
        with _building:
            if _services is None:
                _services = Services.from_settings(get_settings())
    return _services


def use_services(svc: Services | None) -> None:
    """Run the tasks of this process with these Services (tests run the real tasks
    in-process against their own; None goes back to building them from settings)."""
    global _services
    _services = svc


def _header(request: Any, name: str) -> Any:
    """A header shared.core.tasks stamps on every message. Celery makes each message
    header an attribute of the request; `request.headers` holds them only while no
    sender nested a `headers` dict in the message, as Sentry's Celery integration does
    for its trace headers (celery#4875): with SENTRY_DSN set it held Sentry's alone."""
    value = getattr(request, name, None)
    return value if value is not None else (getattr(request, "headers", None) or {}).get(name)


class AppTask(Task):
    abstract = True
    acks_late = True
    ignore_result = True

    @property
    def svc(self) -> Services:
        return services()

    def correlation_id(self) -> str:
        """The sender's correlation id (from the message), or this task's id."""
        return str(_header(self.request, CORRELATION_HEADER) or self.request.id)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = set_correlation_id(self.correlation_id())
        sent_at = _header(self.request, SENT_AT_HEADER)
        if isinstance(sent_at, int | float):
            queue = metrics.queue_label(self.request.delivery_info)
            metrics.QUEUE_LATENCY.labels(task=self.name, queue=queue).observe(
                max(0.0, time.time() - sent_at))
        started = time.perf_counter()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            metrics.TASK_DURATION.labels(task=self.name).observe(time.perf_counter() - started)
            reset_correlation_id(token)


@signals.task_prerun.connect
def _bind_correlation_id(task: Task, **_: Any) -> None:
    """Celery logs a task's failure and its retries, and Sentry's integration captures
    the failure, after __call__ has returned: the correlation id is set for the whole
    run, from task_prerun to task_postrun, so those lines and the event carry it too
    (__call__ sets it again, for a task called directly)."""
    if isinstance(task, AppTask):
        task.request.hf_correlation_token = set_correlation_id(task.correlation_id())


@signals.task_postrun.connect
def _unbind_correlation_id(task: Task, **_: Any) -> None:
    token = getattr(task.request, "hf_correlation_token", None)
    if token is not None:
        task.request.hf_correlation_token = None
        reset_correlation_id(token)


# Delivery options by kind of work. Retries are for TRANSIENT errors only, bounded,
# with jittered backoff; time limits keep a stuck step from holding a slot.
RETRYING = {"autoretry_for": TRANSIENT, "retry_jitter": True}
STEP = {**RETRYING, "retry_backoff": 1, "retry_backoff_max": 30, "max_retries": 5,
        "time_limit": 90, "soft_time_limit": 75}
VALIDATION = {**RETRYING, "retry_backoff": 2, "retry_backoff_max": 120, "max_retries": 6,
              "time_limit": 120, "soft_time_limit": 100}
ERASURE = {**RETRYING, "retry_backoff": 5, "retry_backoff_max": 300, "max_retries": 10,
           "time_limit": 600, "soft_time_limit": 540}
# A beat pass is not retried: the next period runs it again.
MAINTENANCE = {"max_retries": 0, "time_limit": 600, "soft_time_limit": 540}


def task(name: str, options: dict[str, Any]) -> Callable[[Callable[..., Any]], Any]:
    """Register a task under its name with the base, bound to its Services."""
    return celery_app.task(base=AppTask, bind=True, name=name, **options)
