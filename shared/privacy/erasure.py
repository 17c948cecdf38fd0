"""Carrying out an erasure (DELETE /v1/me): every object and row of the user goes;
the audit trail and the erasure request itself stay (they name ids, never image
bytes or URLs).

A run claims the request with a lease it renews while it works (shared/core/leases.py),
so a run whose worker died is resumed by the beat within seconds; any error is
retried. Every step is idempotent: rows are removed one by one under their row
lock (a worker finishing a validation or a try-on at that moment either wrote
before, and its objects go now, or finds its row gone and writes nothing), then
the user's prefixes are swept in both buckets. The request is `done` only when a
final check finds no row and no object left.

A PUT through an upload URL issued before the erasure (such URLs live at most
PRESIGN_TTL_SECONDS) can still land afterwards; no row accounts for it, so the
orphan sweep of the beat removes it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, func, or_, select, update

from shared.access import daily_quota
from shared.core import audit, metrics
from shared.core.db import execute_dml, updated_rows
from shared.core.leases import LeaseKeeper
from shared.core.task_names import ERASE_USER
from shared.models import ErasureRequest, ErasureStatus, TryOn, Upload
from shared.privacy.erasure_requests import RESEND_AFTER
from shared.services import Services
from shared.storage.base import BucketStore
from shared.storage.keys import (
    check_user_id,
    sanitized_key,
    user_result_prefix,
    user_upload_prefixes,
)
from shared.tryons.removal import erase_job

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=30)
RENEW_EVERY_SECONDS = 10.0
# Rows or objects can appear during a run (a request that passed the guard just
# before the erasure was stored): that many passes, then the run fails and is retried.
PASSES = 3
BATCH = 100


class ErasureIncomplete(Exception):
    """Something of the user was still there after the last pass."""


def erase(svc: Services, erasure_id: str, *, owner: str) -> str:
    """One run of an erasure; returns its status afterwards."""
    erasure = _claim(svc, erasure_id, owner)
    if erasure is None:
        with svc.sessions() as session:
            row = session.get(ErasureRequest, erasure_id)
        return row.status if row is not None else "unknown"
    check_user_id(erasure.user_id)
    try:
        with LeaseKeeper(lambda: _renew(svc, erasure_id, owner), RENEW_EVERY_SECONDS, "erasure"):
            counts = _erase_everything(svc, erasure.user_id)
    except Exception as exc:
        _release(svc, erasure_id, owner, type(exc).__name__)
        metrics.ERASURES.labels(outcome="retried").inc()
        raise
    now = svc.clock()
    with svc.sessions.begin() as session:
        if updated_rows(session, update(ErasureRequest).where(
                ErasureRequest.id == erasure_id, ErasureRequest.lease_owner == owner,
                ErasureRequest.status == ErasureStatus.RUNNING).values(
                status=ErasureStatus.DONE, completed_at=now, updated_at=now, lease_owner=None,
                lease_until=None, last_error=None, counts=counts)):
            daily_quota.forget(session, erasure.user_id)  # a user id, like the rest
            audit.record(session, at=now, user_id=erasure.user_id, action="user.erased",
                         subject_type="user", subject_id=erasure.user_id,
                         erasure_id=erasure_id, **counts)
    metrics.ERASURES.labels(outcome="done").inc()
    log.info("erasure %s done: %s", erasure_id, counts)
    return ErasureStatus.DONE


def _claim(svc: Services, erasure_id: str, owner: str) -> ErasureRequest | None:
    now = svc.clock()
    with svc.sessions.begin() as session:
        if not updated_rows(session, update(ErasureRequest).where(
                ErasureRequest.id == erasure_id, ErasureRequest.status.in_(ErasureStatus.UNFINISHED),
                or_(ErasureRequest.lease_owner.is_(None), ErasureRequest.lease_until < now,
                    ErasureRequest.lease_owner == owner)).values(
                status=ErasureStatus.RUNNING, lease_owner=owner, lease_until=now + LEASE,
                runs=ErasureRequest.runs + 1, updated_at=now)):
            return None
        return session.get(ErasureRequest, erasure_id)


def _renew(svc: Services, erasure_id: str, owner: str) -> bool:
    with svc.sessions.begin() as session:
        return bool(updated_rows(session, update(ErasureRequest).where(
            ErasureRequest.id == erasure_id, ErasureRequest.lease_owner == owner).values(
            lease_until=svc.clock() + LEASE)))


def _release(svc: Services, erasure_id: str, owner: str, error: str) -> None:
    """Hand a failed run back: due again after RESEND_AFTER if the retry is lost."""
    try:
        with svc.sessions.begin() as session:
            execute_dml(session, update(ErasureRequest).where(
                ErasureRequest.id == erasure_id, ErasureRequest.lease_owner == owner).values(
                lease_owner=None, lease_until=svc.clock() + RESEND_AFTER, last_error=error[:64]))
    except Exception as exc:  # noqa: BLE001 - the lease lapses by itself
        log.warning("could not release erasure %s (%s)", erasure_id, type(exc).__name__)


def _erase_everything(svc: Services, user_id: str) -> dict[str, int]:
    counts = {"try_ons": 0, "uploads": 0, "objects": 0, "idempotency_records": 0}
    for _ in range(PASSES):
        for job_id in _ids(svc, TryOn, user_id):
            counts["try_ons"] += erase_job(svc, job_id, reason="erasure")
        for upload_id in _ids(svc, Upload, user_id):
            counts["uploads"] += _erase_upload(svc, upload_id)
        counts["idempotency_records"] += svc.idempotency.forget_user(user_id)
        counts["objects"] += _sweep(svc, user_id)
        if _nothing_left(svc, user_id):
            return counts
    raise ErasureIncomplete(user_id)


def _ids(svc: Services, model: type[TryOn] | type[Upload], user_id: str) -> list[str]:
    with svc.sessions() as session:
        return list(session.scalars(select(model.id).where(model.user_id == user_id)))


def _erase_upload(svc: Services, upload_id: str) -> int:
    """An upload's objects and row, under the row's lock. Erasure outranks single-use
    URLs: the raw key is deleted, not blocked by a placeholder."""
    with svc.sessions.begin() as session:
        upload = session.scalars(select(Upload).where(Upload.id == upload_id).with_for_update()) \
            .one_or_none()
        if upload is None:
            return 0
        # The sanitized key by name too: a validator that died after writing it left
        # an object its row never recorded.
        for key in {upload.key, sanitized_key(upload.user_id, upload.id)}:
            svc.upload_store.delete(key)
        execute_dml(session, delete(Upload).where(Upload.id == upload.id))
        audit.record(session, at=svc.clock(), user_id=upload.user_id, action="upload.deleted",
                     subject_type="upload", subject_id=upload.id, reason="erasure")
    return 1


def _sweep(svc: Services, user_id: str) -> int:
    """Whatever is left under the user's prefixes (objects whose rows were gone)."""
    removed = 0
    for store, prefix in user_locations(svc, user_id):
        for key, _ in store.list_keys(prefix):
            store.delete(key)
            removed += 1
    return removed


def user_locations(svc: Services, user_id: str) -> list[tuple[BucketStore, str]]:
    """(store, prefix) pairs that together hold every object of a user."""
    return [*((svc.upload_store, p) for p in user_upload_prefixes(user_id)),
            (svc.result_store, user_result_prefix(user_id))]


def _nothing_left(svc: Services, user_id: str) -> bool:
    with svc.sessions() as session:
        rows = sum(session.scalar(select(func.count()).select_from(model)
                                  .where(model.user_id == user_id)) or 0
                   for model in (TryOn, Upload))
    if rows:
        return False
    return not any(store.list_keys(prefix) for store, prefix in user_locations(svc, user_id))


def resume_unfinished(svc: Services) -> int:
    """The beat's pass: every unfinished erasure whose lease ended (or that nobody
    claimed) is sent again."""
    now = svc.clock()
    with svc.sessions() as session:
        ids = list(session.scalars(select(ErasureRequest.id).where(
            ErasureRequest.status.in_(ErasureStatus.UNFINISHED),
            or_(ErasureRequest.lease_until.is_(None), ErasureRequest.lease_until < now))
            .limit(BATCH)))
    sent = 0
    for erasure_id in ids:
        with svc.sessions.begin() as session:
            # A lapsed lease is cleared, so the run sent now can claim it.
            if not updated_rows(session, update(ErasureRequest).where(
                    ErasureRequest.id == erasure_id,
                    or_(ErasureRequest.lease_until.is_(None), ErasureRequest.lease_until < now))
                    .values(lease_owner=None, lease_until=now + RESEND_AFTER)):
                continue
        sent += bool(svc.dispatch(ERASE_USER, erasure_id))
    if ids:
        log.info("re-sent %d of %d unfinished erasures", sent, len(ids))
    return sent
