"""Task definitions. Each names itself explicitly, states its delivery options,
and calls one domain function."""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.core.tasks import celery_app
from shared.images.scanners import ScannerUnavailable
from shared.privacy import erasure
from shared.storage.s3 import StorageUnavailable
from shared.tryons import pipeline as tryon_pipeline
from shared.tryons import results as result_store
from shared.tryons.use_cases import release_idempotency_keys
from shared.uploads import retention
from shared.uploads.validation import give_up, validate_upload
from worker.base import AppTask

# Dependencies that come back: storage, clamd, the database (a restart, a killed
# connection), Redis. The work is idempotent by the state it checks first.
TRANSIENT = (StorageUnavailable, ScannerUnavailable, ConnectionError, TimeoutError,
             OperationalError, InterfaceError, RedisConnectionError)


@celery_app.task(base=AppTask, bind=True, name="uploads.validate", queue="uploads",
                 autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=120,
                 retry_jitter=True, max_retries=6, time_limit=120, soft_time_limit=100)
def validate(self: AppTask, upload_id: str) -> str:
    # A decode that fails is a rejection inside validate_upload, never a retry. The
    # task id names the claim: a redelivery of this message takes it over at once.
    try:
        return validate_upload(self.svc, upload_id, owner=self.request.id).status
    except SoftTimeLimitExceeded:
        return give_up(self.svc, upload_id, "took longer than the time limit").status


def _maintenance(name: str):  # type: ignore[no-untyped-def]
    return celery_app.task(base=AppTask, bind=True, name=f"maintenance.{name}",
                           queue="maintenance", max_retries=0, time_limit=600,
                           soft_time_limit=540)


@_maintenance("resend_stale_validations")
def resend_stale_validations(self: AppTask) -> int:
    return retention.resend_stale_validations(self.svc)


@_maintenance("purge_raw_uploads")
def purge_raw_uploads(self: AppTask) -> int:
    return retention.purge_raw_objects(self.svc)


@_maintenance("upload_retention")
def upload_retention(self: AppTask) -> int:
    return (retention.expire_unconfirmed(self.svc) + retention.delete_past_retention(self.svc)
            + retention.purge_dead_upload_rows(self.svc))


@_maintenance("remove_orphans")
def remove_orphans(self: AppTask) -> int:
    return retention.remove_orphans(self.svc)


# --- try-ons ----------------------------------------------------------------------
# Each step is short: nothing here waits for fal. Follow-ups (re-checks, retries
# with backoff, the deadline) are sent as new tasks with a countdown.

def _tryon(name: str, queue: str = "tryons_done"):  # type: ignore[no-untyped-def]
    return celery_app.task(base=AppTask, bind=True, name=f"tryons.{name}", queue=queue,
                           autoretry_for=TRANSIENT, retry_backoff=1, retry_backoff_max=30,
                           retry_jitter=True, max_retries=5, time_limit=90, soft_time_limit=75)


@_tryon("run", queue="tryons")
def run_tryon(self: AppTask, job_id: str) -> int:
    return tryon_pipeline.send(self.svc, tryon_pipeline.run(self.svc, job_id))


@_tryon("poll")
def poll_tryon(self: AppTask, job_id: str, attempt: int, reschedule: bool = True) -> int:
    return tryon_pipeline.send(self.svc, tryon_pipeline.poll(self.svc, job_id, attempt,
                                                 reschedule=reschedule))


@_tryon("complete")
def complete_tryon(self: AppTask, job_id: str, attempt: int, completion: dict) -> int:  # type: ignore[type-arg]
    return tryon_pipeline.send(self.svc, tryon_pipeline.complete(
        self.svc, job_id, attempt, tryon_pipeline.Completion(**completion)))


@_tryon("deadline")
def tryon_deadline(self: AppTask, job_id: str) -> int:
    return tryon_pipeline.send(self.svc, tryon_pipeline.enforce_deadline(self.svc, job_id))


@celery_app.task(base=AppTask, bind=True, name="users.erase", queue="maintenance",
                 autoretry_for=(*TRANSIENT, erasure.ErasureIncomplete), retry_backoff=5,
                 retry_backoff_max=300, retry_jitter=True, max_retries=10, time_limit=600,
                 soft_time_limit=540)
def erase_user(self: AppTask, erasure_id: str) -> str:
    # Retries and the beat's resume (maintenance.resume_erasures) both end here.
    return erasure.erase(self.svc, erasure_id, owner=self.request.id)


@_maintenance("reconcile_tryons")
def reconcile_tryons(self: AppTask) -> int:
    return tryon_pipeline.send(self.svc, tryon_pipeline.reconcile(self.svc))


@_maintenance("resume_erasures")
def resume_erasures(self: AppTask) -> int:
    return erasure.resume_unfinished(self.svc)


@_maintenance("repair_result_tags")
def repair_result_tags(self: AppTask) -> int:
    return result_store.repair_tags(self.svc)


@_maintenance("tryon_retention")
def tryon_retention(self: AppTask) -> int:
    release_idempotency_keys(self.svc)
    return retention.delete_expired_results(self.svc)
