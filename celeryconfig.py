"""Celery settings (read by shared/core/tasks.py). JSON only: no pickle ever crosses
the broker. Values that differ per deployment come from shared.core.config."""

from shared.core import task_names as tasks
from shared.core.broker_transport import transport_for
from shared.core.config import get_settings
from shared.core.timeouts import broker_transport_options as broker_transport_options_for

_settings = get_settings()

broker_url = _settings.celery_broker_url
# kombu's Redis transport without a new client object per publish and ack
# (shared/core/broker_transport.py); None keeps kombu's choice by the URL's scheme.
broker_transport = transport_for(broker_url)
result_backend = None
task_ignore_result = True
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"
timezone = "UTC"
enable_utc = True

# A task is acknowledged after it ran, so a worker that dies mid-task hands it
# back; every task is idempotent by the state it checks first.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Redis redelivers unacknowledged messages after this long: longer than any task.
# Socket timeouts bound every send (shared/core/timeouts.py, BROKER_TIMEOUT_SECONDS).
# A worker takes from its queues in the order its -Q lists them, the first non-empty
# one first (shared/core/pools.py: the fal pool lists tryons_done before tryons, so
# finished jobs are completed before new ones are submitted).
broker_transport_options = {"visibility_timeout": 3600, "queue_order_strategy": "priority",
                            **broker_transport_options_for(_settings.broker_timeout_seconds)}
broker_connection_retry_on_startup = True
broker_connection_timeout = 2
task_default_queue = tasks.DEFAULT_QUEUE
task_routes = {name: {"queue": queue} for name, queue in tasks.QUEUES.items()}
worker_send_task_events = True
# No `task-sent` event: nothing reads it (Flower's task list needs only the workers'
# events), and it cost a broker publish for every task sent, in the API's request,
# the webhook listener's and each task that sends a follow-up.
task_send_sent_event = False
worker_hijack_root_logger = False

_every = float(_settings.beat_interval_seconds)
_reconcile = float(_settings.reconcile_interval_seconds)


def _entry(task: str, every: float) -> dict[str, object]:
    # `expires`: a beat entry that could not run in its own period is dropped, not
    # piled up behind a stalled worker.
    return {"task": task, "schedule": every, "options": {"expires": every}}


# The reconcilers take over work whose worker died or whose message was lost; they
# are cheap indexed queries, so they run often (a dead worker costs seconds).
beat_schedule = {
    "reconcile-tryons": _entry(tasks.RECONCILE_TRYONS, _reconcile),
    "resend-stale-validations": _entry(tasks.RESEND_STALE_VALIDATIONS, _reconcile),
    "resume-erasures": _entry(tasks.RESUME_ERASURES, _reconcile),
    "repair-result-tags": _entry(tasks.REPAIR_RESULT_TAGS, _every),
    "purge-raw-uploads": _entry(tasks.PURGE_RAW_UPLOADS, _every),
    "upload-retention": _entry(tasks.UPLOAD_RETENTION, _every * 5),
    "tryon-retention": _entry(tasks.TRYON_RETENTION, _every * 5),
    "remove-orphans": _entry(tasks.REMOVE_ORPHANS, _every * 15),
}
