"""Removing a try-on: its result objects, its row, and its request at fal."""

from __future__ import annotations

from sqlalchemy import delete, select

from shared.core import audit
from shared.core.db import execute_dml
from shared.fal.gateway import cancel_quietly
from shared.models import JobStatus, TryOn
from shared.services import Services
from shared.tryons import results


def erase_job(svc: Services, job_id: str, *, reason: str) -> bool:
    """Remove a job's objects and its row, under the row's lock: a worker finishing
    the job at the same moment either wrote before (its objects go now) or finds the
    row gone and writes nothing. False if the row was already gone."""
    with svc.sessions.begin() as session:
        job = session.scalars(select(TryOn).where(TryOn.id == job_id).with_for_update()) \
            .one_or_none()
        if job is None:
            return False
        # The objects first: if storage fails, the row (and the client's retry) stays.
        results.delete_objects(svc, job.user_id, job.id)
        execute_dml(session, delete(TryOn).where(TryOn.id == job.id))
        audit.record(session, at=svc.clock(), user_id=job.user_id, action="tryon.deleted",
                     subject_type="try_on", subject_id=job.id, reason=reason)
        in_flight_request = job.fal_request_id if job.status in JobStatus.IN_FLIGHT else None
    if in_flight_request:
        cancel_quietly(svc.fal, in_flight_request)
    return True
