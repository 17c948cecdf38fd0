"""Celery settings (read by shared/core/tasks.py). JSON only: no pickle ever crosses
the broker. Values that differ per deployment come from shared.core.config."""

from shared.core.config import get_settings

_settings = get_settings()

broker_url = _settings.celery_broker_url
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
broker_transport_options = {"visibility_timeout": 3600}
broker_connection_retry_on_startup = True
broker_connection_timeout = 2
task_default_queue = "default"
# Finishing jobs has its own queue: a worker consumes its queues in turn, so a
# burst of new jobs does not delay the completion of jobs fal has finished.
task_routes = {"uploads.*": {"queue": "uploads"},
               "tryons.run": {"queue": "tryons"}, "tryons.*": {"queue": "tryons_done"},
               "maintenance.*": {"queue": "maintenance"}, "users.*": {"queue": "maintenance"}}
worker_send_task_events = True
task_send_sent_event = True
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
    "reconcile-tryons": _entry("maintenance.reconcile_tryons", _reconcile),
    "resend-stale-validations": _entry("maintenance.resend_stale_validations", _reconcile),
    "resume-erasures": _entry("maintenance.resume_erasures", _reconcile),
    "repair-result-tags": _entry("maintenance.repair_result_tags", _every),
    "purge-raw-uploads": _entry("maintenance.purge_raw_uploads", _every),
    "upload-retention": _entry("maintenance.upload_retention", _every * 5),
    "tryon-retention": _entry("maintenance.tryon_retention", _every * 5),
    "remove-orphans": _entry("maintenance.remove_orphans", _every * 15),
}
