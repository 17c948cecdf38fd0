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
from kombu.exceptions import ChannelError

from shared.core.observability import current_correlation_id
from shared.core.task_names import ALL_QUEUES
from shared.core.timeouts import BROKER_TRIES

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


def send(task_name: str, *args: object, countdown: float | None = None,
         app: Celery | None = None) -> bool:
    """Send a task; True if the broker took it. Bounded by BROKER_TIMEOUT_SECONDS:
    BROKER_TRIES sends, each one connection attempt and reads bounded by the
    transport's socket timeouts (celeryconfig, from shared/core/timeouts.py)."""
    app = app or celery_app
    error: Exception | None = None
    for _ in range(BROKER_TRIES):
        try:
            _publish(app, task_name, list(args), countdown)
            return True
        except Exception as exc:  # noqa: BLE001 - any broker failure means "left for the reconciler"
            error = exc
    log.warning("broker unavailable; %s left for the reconciler (%s)", task_name,
                type(error).__name__)
    return False


def _publish(app: Celery, task_name: str, args: list[object], countdown: float | None) -> None:
    with app.producer_or_acquire() as producer:
        # One connection attempt: kombu's own loop would retry for the connection
        # timeout, sleeping 2 s between tries, and its publish retry policy nests
        # further retries inside; our loop above is the only one.
        producer.connection.ensure_connection(max_retries=0)
        app.send_task(task_name, args=args, countdown=countdown, producer=producer,
                      retry=False)


def ping_broker(app: Celery | None = None) -> None:
    """Readiness: one connection attempt, within half of BROKER_TIMEOUT_SECONDS."""
    with (app or celery_app).connection_for_write() as conn:
        conn.ensure_connection(max_retries=0)


def queue_lengths(app: Celery | None = None) -> dict[str, int]:
    """Messages waiting in each of our queues (not those a worker holds unacknowledged),
    for the `celery_queue_length` gauge. A passive declare is the broker-neutral way
    (Redis: LLEN of the queue's lists); one connection attempt, bounded like a send."""
    app = app or celery_app
    lengths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=0)
        channel = conn.channel()
        try:
            for queue in ALL_QUEUES:
                try:
                    declared = channel.queue_declare(queue=queue, passive=True)
                    lengths[queue] = int(declared.message_count)
                except ChannelError:
                    # Never declared yet: nothing waits in it. AMQP closes a channel
                    # that asked for a missing queue, so the next asks on a new one.
                    lengths[queue] = 0
                    channel.close()
                    channel = conn.channel()
        finally:
            channel.close()
    return lengths
