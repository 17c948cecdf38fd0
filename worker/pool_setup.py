"""What a worker process learns about its pool as it starts, and what it builds
then, before any task runs."""

from __future__ import annotations

from typing import Any

from celery import signals
from celery.concurrency.thread import TaskPool as ThreadsPool

from shared.core.pools import declare_process_concurrency
from shared.storage.s3 import S3Storage
from worker.base import services


@signals.worker_init.connect
def _size_database_pool(sender: Any = None, **_: Any) -> None:
    """A threads pool's tasks share the main process's connection pool: one
    connection per thread. A prefork child runs one task at a time (the default)."""
    pool_cls = getattr(sender, "pool_cls", None)
    if isinstance(pool_cls, type) and issubclass(pool_cls, ThreadsPool):
        declare_process_concurrency(int(sender.concurrency))
        _build_clients()  # its tasks run in this process


@signals.worker_process_init.connect
def _build_clients(**_: Any) -> None:
    """The process that runs tasks (a prefork child, or a threads pool's worker)
    builds its Services and S3 clients as it starts: its footprint is there from its
    start (the maintenance child's first S3 call came minutes in, at the first raw
    purge, and grew it by 17 MiB then), and no task pays the ~130 ms of CPU."""
    storage = services().storage
    if isinstance(storage, S3Storage):
        storage.build_clients()
