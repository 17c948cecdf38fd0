"""The worker's Celery application: shared.core.tasks's app with the tasks registered
and the process-wide concerns (logging, Sentry, correlation ids) wired in.

Run: celery -A worker.app worker -Q default,uploads,tryons,tryons_done,maintenance
"""

from __future__ import annotations

import logging
import resource
from typing import Any

from celery import signals
from sentry_sdk.integrations.celery import CeleryIntegration

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
    Celery's --max-memory-per-child only looks after a task has finished."""
    limit_mb = get_settings().worker_memory_limit_mb
    if limit_mb > 0:
        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@signals.worker_process_init.connect
@signals.beat_init.connect
def _init_sentry(**_: Any) -> None:
    settings = get_settings()
    init_sentry(settings.sentry_dsn, settings.env, [CeleryIntegration()])
