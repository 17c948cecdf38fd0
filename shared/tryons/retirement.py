"""Retiring a hairstyle now: its queued jobs fail with `tryon.hairstyle_retired`.

Removing a style from the catalogue only stops new jobs for it; the jobs already
accepted run with the prompt they were accepted with. When those must not run
either, the operator removes the style, deploys, and runs
`hairfluencer retire-hairstyle STYLE_ID` (docs/reliability.md, "Catalogue changes").
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from shared.models import JobStatus, TryOn
from shared.services import Services
from shared.tryons.hairstyles import RETIRED, catalogue
from shared.tryons.state import fail

log = logging.getLogger(__name__)

BATCH = 500


class StillInCatalogue(Exception):
    """The style is still offered here: jobs accepted after the retirement would run."""


def retire_hairstyle(svc: Services, hairstyle_id: str) -> int:
    """Fail every queued job of the style (never submitted, or back in the queue
    after a failed submission) and return how many. A job fal has already accepted,
    or one being submitted right now, runs to its end: it may have been paid for.
    Running it again is harmless (it fails the jobs still queued)."""
    if hairstyle_id in catalogue():
        raise StillInCatalogue(hairstyle_id)
    before = _retired_jobs(svc, hairstyle_id)
    while jobs := _queued_jobs(svc, hairstyle_id):
        for job in jobs:
            # Fenced by the attempt: a job claimed meanwhile is being submitted and
            # is left alone, as above.
            fail(svc, job, RETIRED, attempt=job.attempt, detail="hairstyle retired")
    failed = _retired_jobs(svc, hairstyle_id) - before
    log.info("hairstyle %s retired: %d queued jobs failed", hairstyle_id, failed)
    return failed


def _queued_jobs(svc: Services, hairstyle_id: str) -> list[TryOn]:
    with svc.sessions() as session:
        return list(session.scalars(select(TryOn).where(
            TryOn.hairstyle_id == hairstyle_id, TryOn.status == JobStatus.QUEUED)
            .order_by(TryOn.created_at).limit(BATCH)))


def _retired_jobs(svc: Services, hairstyle_id: str) -> int:
    with svc.sessions() as session:
        return session.scalar(select(func.count()).select_from(TryOn).where(
            TryOn.hairstyle_id == hairstyle_id, TryOn.error_code == RETIRED)) or 0
