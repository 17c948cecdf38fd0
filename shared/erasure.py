"""Erasure of one user (DELETE /v1/me): every object and row of theirs goes; the
audit trail stays (it names ids, never image bytes or URLs).

Runs in a worker. It is idempotent and can be repeated: anything issued to the
user while it ran is caught by running it again, and the sweep by key prefix
removes objects whose rows were already gone.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select

from shared import audit
from shared.keys import check_user_id
from shared.models import TryOn, Upload
from shared.services import Services
from shared.tryons import erase_job

log = logging.getLogger(__name__)

ERASE_TASK = "users.erase"


def erase_user(svc: Services, user_id: str) -> dict[str, int]:
    check_user_id(user_id)
    s = svc.settings
    now = svc.clock()
    with svc.sessions() as session:
        jobs = list(session.scalars(select(TryOn).where(TryOn.user_id == user_id)))
        uploads = list(session.scalars(select(Upload).where(Upload.user_id == user_id)))
    for job in jobs:
        erase_job(svc, job, reason="erasure")
    for upload in uploads:
        if upload.raw_purged_at is None or upload.sanitized_key:
            # Erasure outranks single-use URLs: the raw key is deleted, not blocked.
            svc.storage.delete(s.uploads_bucket, upload.key)
            if upload.sanitized_key:
                svc.storage.delete(s.uploads_bucket, upload.sanitized_key)
    swept = 0
    for bucket, prefix in ((s.uploads_bucket, f"uploads/{user_id}/"),
                           (s.uploads_bucket, f"sanitized/{user_id}/"),
                           (s.processed_bucket, f"results/{user_id}/")):
        for key, _ in svc.storage.list_keys(bucket, prefix):
            svc.storage.delete(bucket, key)
            swept += 1
    with svc.sessions.begin() as session:
        session.execute(delete(Upload).where(Upload.user_id == user_id))
        audit.record(session, at=now, user_id=user_id, action="user.erased",
                     subject_type="user", subject_id=user_id, uploads=len(uploads),
                     try_ons=len(jobs), swept_objects=swept)
    log.info("user erased: %d uploads, %d try-ons, %d stray objects", len(uploads), len(jobs),
             swept)
    return {"uploads": len(uploads), "try_ons": len(jobs), "swept": swept}


def request_erasure(svc: Services, user_id: str) -> bool:
    """Record the request and hand it to a worker; False if the broker is down."""
    with svc.sessions.begin() as session:
        audit.record(session, at=svc.clock(), user_id=user_id, action="user.erasure_requested",
                     subject_type="user", subject_id=user_id)
    return svc.dispatch(ERASE_TASK, user_id)
