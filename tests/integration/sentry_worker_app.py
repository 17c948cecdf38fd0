"""The production worker app (`worker.app`), for a test worker started with
`celery -A tests.integration.sentry_worker_app worker`: the same tasks, signal wiring
and retry policy, with fewer retries for `tryons.complete`, so that a task whose
retries run out does so in seconds, not in the minute its full backoff takes."""

from __future__ import annotations

from shared.core import task_names as names
from worker.app import app

MAX_RETRIES = 2

app.tasks[names.COMPLETE_TRYON].max_retries = MAX_RETRIES

__all__ = ["app"]
