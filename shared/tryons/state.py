"""The try-on job's states and the transitions every step shares: load, fail,
retry after a fal failure, time out; and the follow-ups a step asks for.

Each step returns the follow-ups it wants (a task name, arguments, a countdown);
the thin task layer sends them (`send`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update

from shared.core import audit, metrics
from shared.core.db import updated_rows
from shared.core.task_names import RUN_TRYON
from shared.fal.gateway import FalFailure, cancel_quietly
from shared.models import JobStatus, TryOn
from shared.services import Services
from shared.storage.base import StorageUnavailable
from shared.tryons import results
from shared.tryons.retention import result_deadline

log = logging.getLogger(__name__)

# A submitted job with no news this long is asked about (webhook lost, poller died).
SILENT_AFTER = timedelta(seconds=15)


@dataclass(frozen=True)
class FollowUp:
    task: str
    args: tuple[Any, ...]
    countdown: float = 0.0


def send(svc: Services, follow_ups: list[FollowUp]) -> int:
    """Send the follow-ups a step asked for (the task layer's only job)."""
    for f in follow_ups:
        svc.dispatch(f.task, *f.args, countdown=f.countdown or None)
    return len(follow_ups)


def load_job(svc: Services, job_id: str) -> TryOn | None:
    with svc.sessions() as session:
        return session.get(TryOn, job_id)


def seconds_until(moment: datetime, now: datetime) -> float:
    return max(0.0, (moment - now).total_seconds())


def after_failure(svc: Services, job_id: str, attempt: int,
                   failure: FalFailure) -> list[FollowUp]:
    """Retry a retriable failure with backoff (a new submission, a fresh URL), else fail."""
    metrics.FAL_FAILURES.labels(code=failure.code).inc()
    job = load_job(svc, job_id)
    if job is None or job.attempt != attempt or job.status != JobStatus.PROCESSING:
        return []
    s = svc.settings
    failures = job.fal_failures + 1
    if failure.retriable and failures <= s.fal_max_retries:
        delay = (2 ** failures) * s.fal_retry_base_seconds * random.uniform(0.75, 1.25)
        now = svc.clock()
        if job.deadline_at is not None and now + timedelta(seconds=delay) >= job.deadline_at:
            return time_out(svc, job)
        with svc.sessions.begin() as session:
            requeued = updated_rows(session, update(TryOn).where(
                TryOn.id == job.id, TryOn.attempt == attempt,
                TryOn.status == JobStatus.PROCESSING).values(
                status=JobStatus.QUEUED, fal_request_id=None, fal_failures=failures,
                due_at=now + timedelta(seconds=delay), updated_at=now))
        return [FollowUp(RUN_TRYON, (job.id,), delay)] if requeued else []
    fail(svc, job, failure.code, attempt=attempt, detail=str(failure))
    return []


def fail(svc: Services, job: TryOn, code: str, *, attempt: int | None = None,
          detail: str = "") -> None:
    now = svc.clock()
    conditions = [TryOn.id == job.id, TryOn.status.in_(JobStatus.IN_FLIGHT)]
    if attempt is not None:
        conditions.append(TryOn.attempt == attempt)
    with svc.sessions.begin() as session:
        # A failed job has nothing to keep, favorite or not: it goes like a result.
        if not updated_rows(session, update(TryOn).where(*conditions).values(
                status=JobStatus.FAILED, error_code=code, completed_at=now, updated_at=now,
                due_at=None, delete_after=result_deadline(svc, now))):
            return
        audit.record(session, at=now, user_id=job.user_id, action="tryon.failed",
                     subject_type="try_on", subject_id=job.id, code=code,
                     attempt=attempt or job.attempt, source_sha256=job.source_sha256)
    try:
        # A finalizer that died after writing leaves objects no row records.
        results.delete_objects(svc, job.user_id, job.id)
    except StorageUnavailable:
        log.warning("job %s: could not delete partial results; the orphan sweep will", job.id)
    metrics.JOB_OUTCOMES.labels(outcome="failed").inc()
    metrics.JOB_DURATION.labels(outcome="failed").observe((now - job.created_at).total_seconds())
    log.warning("job %s failed: %s %s", job.id, code, detail)


def past_deadline(job: TryOn, now: datetime) -> bool:
    return job.deadline_at is not None and now >= job.deadline_at


def enforce_deadline(svc: Services, job_id: str) -> list[FollowUp]:
    """The reconciler found the job past its deadline: cancel and fail it. Early by
    this process's clock (the beat's runs ahead), it is left to the next pass."""
    job = load_job(svc, job_id)
    if job is None or job.status not in JobStatus.IN_FLIGHT or not past_deadline(job, svc.clock()):
        return []
    return time_out(svc, job)


def time_out(svc: Services, job: TryOn) -> list[FollowUp]:
    if job.fal_request_id:
        cancel_quietly(svc.fal, job.fal_request_id)
    fail(svc, job, "fal.timeout")
    return []


def sync_tags_quietly(svc: Services, job_id: str) -> None:
    try:
        results.sync_tags(svc, job_id)
    except Exception as exc:  # noqa: BLE001 - the row says what is wanted; the beat repairs
        log.warning("re-tagging job %s failed (%s); left for the beat", job_id, type(exc).__name__)
