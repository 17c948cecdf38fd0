"""The Celery application object and a safe way to send tasks by name.

The API sends tasks by name only (shared/core/task_names.py; it never imports
worker code). A send that fails because the broker is down is
not an error for the caller: the row that describes the work is already
committed, and a beat reconciler re-sends it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, signals

from shared.core.observability import current_correlation_id

log = logging.getLogger(__name__)

celery_app = Celery("hairfluencer")
celery_app.config_from_object("celeryconfig")

# Message headers our task base reads. Not "correlation_id": Celery reserves that
# name and drops it from the task's request headers.
CORRELATION_HEADER = "hf_correlation_id"
SENT_AT_HEADER = "hf_sent_at"


@signals.before_task_publish.connect
def _stamp_headers(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Every task sent from a request or a task carries its correlation id and the
    time it was sent (for the queue-latency metric). Connected here, in the module
    both the API and the workers import to send tasks."""
    if headers is None:
        return
    headers.setdefault(CORRELATION_HEADER, current_correlation_id())
    headers.setdefault(SENT_AT_HEADER, time.time())


# Keep a dead broker from stalling an HTTP request: two quick tries, then give up.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                        "interval_max": 0.5}


def send(task_name: str, *args: object, countdown: float | None = None) -> bool:
    """Send a task; True if the broker took it."""
    try:
        celery_app.send_task(task_name, args=list(args), countdown=countdown,
                             retry=True, retry_policy=PUBLISH_RETRY_POLICY)
    except Exception as exc:  # noqa: BLE001 - any broker failure means "left for the reconciler"
        log.warning("broker unavailable; %s left for the reconciler (%s)", task_name,
                    type(exc).__name__)
        return False
    return True
