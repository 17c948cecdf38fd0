"""The orphan sweep: objects that no live record accounts for (a worker that died
after writing, a deletion racing a finishing worker, a late PUT through a URL
issued before an erasure) are removed.

Only objects older than the longest URL lifetime plus the margin are looked at: a
younger object may belong to an issuance being written right now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import TryOn, Upload, UploadStatus
from shared.services import Services
from shared.storage.base import BucketStore
from shared.storage.keys import RAW_PREFIX, RESULT_PREFIX, SANITIZED_PREFIX
from shared.uploads.retention import BATCH, DONE_STATES

log = logging.getLogger(__name__)

LiveKeys = Callable[[Session, list[str]], set[str]]


def _live_raw(session: Session, keys: list[str]) -> set[str]:
    # Raw objects legitimately exist until purged, whatever the status.
    return set(session.scalars(select(Upload.key).where(
        Upload.key.in_(keys), Upload.raw_purged_at.is_(None),
        Upload.status.in_((UploadStatus.PENDING, UploadStatus.VALIDATING, *DONE_STATES)))))


def _live_sanitized(session: Session, keys: list[str]) -> set[str]:
    return {key for key in session.scalars(select(Upload.sanitized_key).where(
        Upload.sanitized_key.in_(keys), Upload.status == UploadStatus.READY)) if key}


def _live_results(session: Session, keys: list[str]) -> set[str]:
    live = set(session.scalars(select(TryOn.result_key).where(TryOn.result_key.in_(keys))))
    live |= set(session.scalars(select(TryOn.thumbnail_key).where(TryOn.thumbnail_key.in_(keys))))
    return {key for key in live if key}


def remove_orphans(svc: Services) -> int:
    s = svc.settings
    min_age = timedelta(seconds=s.presign_ttl_seconds + s.raw_purge_margin_seconds)
    removed = sum(_sweep(svc, store, prefix, live, min_age) for store, prefix, live in (
        (svc.upload_store, RAW_PREFIX, _live_raw),
        (svc.upload_store, SANITIZED_PREFIX, _live_sanitized),
        (svc.result_store, RESULT_PREFIX, _live_results)))
    if removed:
        log.info("removed %d orphaned objects", removed)
    return removed


def _sweep(svc: Services, store: BucketStore, prefix: str, live_keys: LiveKeys,
           min_age: timedelta) -> int:
    cutoff = svc.clock() - min_age
    candidates = [k for k, modified in store.list_keys(prefix) if modified < cutoff]
    removed = 0
    for start in range(0, len(candidates), BATCH):
        chunk = candidates[start:start + BATCH]
        with svc.sessions() as session:
            live = live_keys(session, chunk)
        for key in chunk:
            if key not in live:
                store.delete(key)
                removed += 1
    return removed
