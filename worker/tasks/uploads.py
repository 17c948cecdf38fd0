"""Validating an upload."""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded

from shared.core import task_names as names
from shared.uploads.validation import give_up, validate_upload
from worker.base import VALIDATION, AppTask, task


@task(names.VALIDATE_UPLOAD, VALIDATION)
def validate(self: AppTask, upload_id: str) -> str:
    # A decode that fails is a rejection inside validate_upload, never a retry. The
    # task id names the claim: a redelivery of this message takes it over at once;
    # the retry number tells a retry (after a dependency failure) from a redelivery.
    try:
        return validate_upload(self.svc, upload_id, owner=self.request.id,
                               attempt=self.request.retries or 0).status
    except SoftTimeLimitExceeded:
        return give_up(self.svc, upload_id, "took longer than the time limit").status
