"""The erasure request of DELETE /v1/me: stored before the API answers, readable by
the app (GET /v1/me/erasure). While it is unfinished, new uploads and try-ons are
refused (shared/access/erasure_lock.py), so that an erasure can finish at all.

The work itself is shared/privacy/erasure.py; a lost message or a failed run only delays
it, because the beat resumes every unfinished request.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from shared.core import audit
from shared.core.errors import AppError
from shared.core.task_names import ERASE_USER
from shared.models import ErasureRequest, ErasureStatus, new_id
from shared.services import Services

# An erasure nobody has claimed this long after it was requested (or sent again)
# is sent again by the beat.
RESEND_AFTER = timedelta(seconds=20)


def request_erasure(svc: Services, user_id: str) -> ErasureRequest:
    """Store (or find) the user's erasure, then hand it to a worker. A second request
    while one is unfinished returns it; after one finished, the same erasure is
    opened again (the user may have uploaded since)."""
    try:
        erasure = _store(svc, user_id)
    except IntegrityError:
        erasure = _store(svc, user_id)  # a concurrent first request made the row
    # If the broker is down the request is stored all the same: the beat sends it.
    svc.dispatch(ERASE_USER, erasure.id)
    return erasure


def _store(svc: Services, user_id: str) -> ErasureRequest:
    now = svc.clock()
    with svc.sessions.begin() as session:
        erasure = session.scalars(select(ErasureRequest).where(
            ErasureRequest.user_id == user_id).with_for_update()).one_or_none()
        if erasure is not None and erasure.status in ErasureStatus.UNFINISHED:
            return erasure
        if erasure is None:
            erasure = ErasureRequest(id=new_id(), user_id=user_id, runs=0, counts={})
            session.add(erasure)
        erasure.status = ErasureStatus.PENDING
        erasure.requested_at = erasure.updated_at = now
        erasure.completed_at = erasure.lease_owner = erasure.last_error = None
        erasure.lease_until = now + RESEND_AFTER
        session.flush()
        audit.record(session, at=now, user_id=user_id, action="user.erasure_requested",
                     subject_type="user", subject_id=user_id, erasure_id=erasure.id)
    return erasure


def read_erasure(svc: Services, user_id: str) -> ErasureRequest:
    with svc.sessions() as session:
        erasure = session.scalars(select(ErasureRequest).where(
            ErasureRequest.user_id == user_id)).one_or_none()
    if erasure is None:
        raise AppError("erasure.not_found")
    return erasure
