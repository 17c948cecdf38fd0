"""Erasing a user (DELETE /v1/me)."""

from __future__ import annotations

from shared.core import task_names as names
from shared.privacy import erasure
from worker.base import ERASURE, TRANSIENT, AppTask, task


@task(names.ERASE_USER, {**ERASURE, "autoretry_for": (*TRANSIENT, erasure.ErasureIncomplete)})
def erase_user(self: AppTask, erasure_id: str) -> str:
    # Retries and the beat's resume (maintenance.resume_erasures) both end here.
    return erasure.erase(self.svc, erasure_id, owner=self.request.id)
