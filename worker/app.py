"""The worker's Celery application: shared.core.tasks's app with the tasks registered
and the process-wide concerns (logging, Sentry, correlation ids) wired in.

Run the workers of each pool, e.g. celery -A worker.app worker -n fal@%h
-Q tryons_done,tryons -P threads -c 8, one per core (the pools are declared in shared/core/pools.py;
tests/unit/test_process_layout.py keeps the Procfile, compose and the dev stack in step)
"""

from __future__ import annotations

import logging
import resource
from typing import Any

from celery import signals
from sentry_sdk.integrations.celery import CeleryIntegration

import worker.metrics_endpoint  # noqa: F401  - each worker's and beat's METRICS_PORT
import worker.pool_setup  # noqa: F401  - sizes the database pool to the worker pool
import worker.tasks  # noqa: F401  - registers the tasks on the app
from shared.core.config import get_settings
from shared.core.observability import configure_logging, init_sentry, install_redaction
from shared.core.tasks import celery_app

app = celery_app


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(get_settings().log_level)


@signals.after_setup_task_logger.connect
@signals.after_setup_logger.connect
def _redact_celery_handlers(logger: logging.Logger, **_: Any) -> None:
    install_redaction(logger)


@signals.worker_process_init.connect
def _limit_memory(**_: Any) -> None:
    """A hard address-space limit for each prefork child, set as it starts: a decode
    that runs away fails with MemoryError inside its task (and a child that dies of
    it anyway is a crash the validation counts), instead of taking the host down.
    Celery's --max-memory-per-child only looks after a task has finished.

    worker_process_init is sent in each prefork child and by the solo pool, never by
    the threads or gevent pools, and that is meant: there the limit would bind the
    whole worker, whose thread stacks and malloc arenas (64 MB of address space per
    thread that allocates) reach it long before its real memory does, and a
    MemoryError in one greenlet or thread takes the process with it. Such a pool is
    bounded from outside, by its container's or unit's memory limit."""
    limit_mb = get_settings().worker_memory_limit_mb
    if limit_mb > 0:
        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@signals.worker_init.connect
@signals.beat_init.connect
def _init_sentry(**_: Any) -> None:
    """Sentry in the worker's main process, before its pool starts, whatever the pool:
    worker_init is sent by every worker, and the SDK's Celery integration must patch
    Celery's tracer before the tracers are built (prefork children build theirs as
    they start, before worker_process_init, so an SDK set up there never saw a task
    fail). Prefork children inherit the set-up SDK; its transport starts a new
    sending thread in a process whose pid is not the one that started it."""
    settings = get_settings()
    init_sentry(settings.sentry_dsn, settings.env, [CeleryIntegration()])
