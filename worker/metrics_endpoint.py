"""The workers' and beat's own scrape endpoint (METRICS_PORT): each Celery worker and
beat is a process group of its own (shared/core/metrics_server.py).

A worker's endpoint starts on celeryd_after_setup, which the worker program sends in
its main process whatever the pool, before the pool starts (prefork children then
write into the same PROMETHEUS_MULTIPROC_DIR; threads and solo pools run their tasks
in the main process itself). Not on worker_init, which comes before Celery sets up
logging: the line naming the endpoint, or saying why it could not open, would be
lost. Beat's starts on beat_init.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from shared.core.config import get_settings
from shared.core.metrics_server import forget_process, serve_metrics


@signals.celeryd_after_setup.connect
@signals.beat_init.connect
def _serve_metrics(**_: Any) -> None:
    serve_metrics(get_settings())


@signals.worker_process_shutdown.connect
def _forget_child(pid: int, **_: Any) -> None:
    """A prefork child that ends (its task limit, a shutdown) says so as it exits."""
    forget_process(pid)
