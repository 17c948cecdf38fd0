"""Every task's name and queue, written once.

The worker's decorators, celeryconfig's routes and beat schedule, the domain
functions that send follow-ups and the tests all take them from here.
"""

from __future__ import annotations

VALIDATE_UPLOAD = "uploads.validate"
RUN_TRYON = "tryons.run"
POLL_TRYON = "tryons.poll"
COMPLETE_TRYON = "tryons.complete"
TRYON_DEADLINE = "tryons.deadline"
ERASE_USER = "users.erase"
RECONCILE_TRYONS = "maintenance.reconcile_tryons"
RESEND_STALE_VALIDATIONS = "maintenance.resend_stale_validations"
RESUME_ERASURES = "maintenance.resume_erasures"
REPAIR_RESULT_TAGS = "maintenance.repair_result_tags"
PURGE_RAW_UPLOADS = "maintenance.purge_raw_uploads"
UPLOAD_RETENTION = "maintenance.upload_retention"
TRYON_RETENTION = "maintenance.tryon_retention"
REMOVE_ORPHANS = "maintenance.remove_orphans"

# Finishing jobs has its own queue: a worker consumes its queues in turn, so a
# burst of new jobs does not delay the completion of jobs fal has finished.
QUEUES = {
    VALIDATE_UPLOAD: "uploads",
    RUN_TRYON: "tryons",
    POLL_TRYON: "tryons_done", COMPLETE_TRYON: "tryons_done", TRYON_DEADLINE: "tryons_done",
    ERASE_USER: "maintenance",
    **{name: "maintenance" for name in (
        RECONCILE_TRYONS, RESEND_STALE_VALIDATIONS, RESUME_ERASURES, REPAIR_RESULT_TAGS,
        PURGE_RAW_UPLOADS, UPLOAD_RETENTION, TRYON_RETENTION, REMOVE_ORPHANS)},
}
DEFAULT_QUEUE = "default"
ALL_QUEUES = (DEFAULT_QUEUE, *dict.fromkeys(QUEUES.values()))
