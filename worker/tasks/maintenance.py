"""The beat's passes (celeryconfig.beat_schedule): reconcilers that take over work
nobody holds, and retention."""

from __future__ import annotations

from shared.core import task_names as names
from shared.privacy import erasure, orphans
from shared.tryons import reconcile, results, state
from shared.tryons import retention as tryon_retention
from shared.uploads import retention as upload_retention
from worker.base import MAINTENANCE, AppTask, task


@task(names.RECONCILE_TRYONS, MAINTENANCE)
def reconcile_tryons(self: AppTask) -> int:
    return state.send(self.svc, reconcile.reconcile(self.svc))


@task(names.RESEND_STALE_VALIDATIONS, MAINTENANCE)
def resend_stale_validations(self: AppTask) -> int:
    return upload_retention.resend_stale_validations(self.svc)


@task(names.RESUME_ERASURES, MAINTENANCE)
def resume_erasures(self: AppTask) -> int:
    return erasure.resume_unfinished(self.svc)


@task(names.REPAIR_RESULT_TAGS, MAINTENANCE)
def repair_result_tags(self: AppTask) -> int:
    return results.repair_tags(self.svc)


@task(names.PURGE_RAW_UPLOADS, MAINTENANCE)
def purge_raw_uploads(self: AppTask) -> int:
    return upload_retention.purge_raw_objects(self.svc)


@task(names.UPLOAD_RETENTION, MAINTENANCE)
def upload_retention_pass(self: AppTask) -> int:
    return (upload_retention.expire_unconfirmed(self.svc)
            + upload_retention.delete_past_retention(self.svc)
            + upload_retention.purge_dead_upload_rows(self.svc))


@task(names.TRYON_RETENTION, MAINTENANCE)
def tryon_retention_pass(self: AppTask) -> int:
    tryon_retention.release_idempotency_keys(self.svc)
    return tryon_retention.delete_expired_results(self.svc)


@task(names.REMOVE_ORPHANS, MAINTENANCE)
def remove_orphans(self: AppTask) -> int:
    return orphans.remove_orphans(self.svc)
