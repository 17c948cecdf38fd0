"""What a worker process learns about its pool as it starts, before any task runs."""

from __future__ import annotations

from typing import Any

from celery import signals
from celery.concurrency.thread import TaskPool as ThreadsPool

from shared.core.pools import declare_process_concurrency


@signals.worker_init.connect
def _size_database_pool(sender: Any = None, **_: Any) -> None:
    """A threads pool's tasks share the main process's connection pool: one
    connection per thread. A prefork child runs one task at a time (the default)."""
    pool_cls = getattr(sender, "pool_cls", None)
    if isinstance(pool_cls, type) and issubclass(pool_cls, ThreadsPool):
        declare_process_concurrency(int(sender.concurrency))
