"""Favorites that stay kept, results the lifecycle never deletes before the
`deleteAfter` the API reports, and failed jobs that have a deadline too. Real
PostgreSQL and LocalStack S3 (whose object tags and LastModified are what a
bucket lifecycle rule reads), the fal emulator through the real fal-client."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from shared.core.i18n import MESSAGES
from shared.fal.completions import Completion
from shared.models import AuditEvent
from shared.storage.base import StorageUnavailable
from shared.tryons import completion, state, submission
from shared.tryons import results as result_store
from shared.tryons import retention as tryon_retention
from tests.integration.test_tryons import (
    job_row,
    ready_job,
)

LIFECYCLE = timedelta(days=7)  # the processed bucket's rule (shared/storage/setup.py)


def tag(svc, key: str) -> str:
    tags = svc.storage.client.get_object_tagging(Bucket=svc.settings.processed_bucket,
                                                 Key=key)["TagSet"]
    return {t["Key"]: t["Value"] for t in tags}["retention"]


def created(svc, key: str) -> datetime:
    info = svc.storage.head(svc.settings.processed_bucket, key)
    assert info.last_modified is not None
    return info.last_modified


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_a_result_is_deleted_by_us_before_the_lifecycle_could(client, auth, svc, dispatch):
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="gil")
    body = client.get(f"/v1/try-ons/{job_id}", headers=headers).get_json()
    for key in (job.result_key, job.thumbnail_key):
        assert tag(svc, key) == "temporary"
        assert parse(body["deleteAfter"]) <= created(svc, key) + LIFECYCLE


def test_a_failed_retag_is_repaired_by_the_beat(client, auth, svc, dispatch, monkeypatch):
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="hu")

    def down(*_: Any) -> None:
        raise StorageUnavailable("ClientError SlowDown")

    monkeypatch.setattr(svc.storage, "set_tags", down)
    response = client.put(f"/v1/try-ons/{job_id}/favorite", headers=headers)
    assert response.status_code == 200  # the row is the truth, and it says favorite
    assert response.get_json()["favorite"] is True and response.get_json()["deleteAfter"] is None
    assert tag(svc, job.result_key) == "temporary" and job_row(svc, job_id).result_tags is None
    monkeypatch.undo()
    assert result_store.repair_tags(svc) == 1
    assert tag(svc, job.result_key) == tag(svc, job.thumbnail_key) == "kept"
    assert job_row(svc, job_id).result_tags == "kept"
    assert result_store.repair_tags(svc) == 0


def test_a_late_duplicate_completion_cannot_reset_a_favorites_tag(client, auth, svc, dispatch,
                                                                  emulator):
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="ivy")
    client.put(f"/v1/try-ons/{job_id}/favorite", headers=headers)
    assert tag(svc, job.result_key) == "kept"
    urls = tuple(svc.fal.result(job.fal_request_id).image_urls)
    for attempt in (job.attempt, job.attempt - 1):
        completion.complete(svc, job_id, attempt, Completion(True, job.fal_request_id, urls))
    assert tag(svc, job.result_key) == tag(svc, job.thumbnail_key) == "kept"
    with svc.sessions() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.subject_id == job_id, AuditEvent.action == "tryon.succeeded")) == 1


def test_a_job_favorited_while_it_runs_ends_kept(client, auth, svc, dispatch, emulator):
    from tests.integration.test_tryons import queued_job, wait_done

    headers = auth("jo")
    job_id = queued_job(client, auth, dispatch, "jo")
    assert client.put(f"/v1/try-ons/{job_id}/favorite", headers=headers).status_code == 200
    state.send(svc, submission.run(svc, job_id))
    job = wait_done(svc, dispatch, job_id)
    assert job.status == "succeeded" and job.delete_after is None
    assert tag(svc, job.result_key) == tag(svc, job.thumbnail_key) == "kept"
    assert job.result_tags == "kept"


def test_unfavoriting_restarts_the_lifecycle_clock(client, auth, svc, dispatch):
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="kit")
    client.put(f"/v1/try-ons/{job_id}/favorite", headers=headers)
    before = created(svc, job.result_key)
    time.sleep(1.1)  # S3 times are whole seconds
    # Months later: the object is older than the lifecycle's 7 days.
    real = svc.clock
    svc.clock = lambda: real() + timedelta(days=60)
    body = client.delete(f"/v1/try-ons/{job_id}/favorite", headers=headers).get_json()
    delete_after = parse(body["deleteAfter"])
    for key in (job.result_key, job.thumbnail_key):
        assert tag(svc, key) == "temporary"
        renewed = created(svc, key)
        assert renewed > before
        # Were the object still counted from its first creation, the lifecycle would
        # delete it long before deleteAfter; counted from the copy, never before.
        # (The test's clock runs 60 days ahead of LocalStack's.)
        assert delete_after - timedelta(days=60) <= renewed + LIFECYCLE
    assert result_store.repair_tags(svc) == 0


def test_a_failed_job_has_a_deadline_and_is_purged_like_a_result(client, auth, svc, dispatch,
                                                                 emulator):
    emulator.configure(job_faults=["content_policy"])
    headers, _, job_id, job = ready_job(client, auth, svc, dispatch, user="lux")
    assert job.status == "failed"
    body = client.get(f"/v1/try-ons/{job_id}", headers=headers).get_json()
    deadline = parse(body["deleteAfter"])
    assert deadline == job.completed_at.replace(microsecond=0) + timedelta(
        days=svc.settings.result_retention_days)
    for locale in ("en", "es"):
        response = client.put(f"/v1/try-ons/{job_id}/favorite",
                              headers={**headers, "Accept-Language": locale})
        assert response.status_code == 409
        error = response.get_json()["error"]
        assert (error["code"], error["message"]) == ("tryon.no_result",
                                                     MESSAGES["tryon.no_result"][locale])
    assert job_row(svc, job_id).favorite is False and job_row(svc, job_id).delete_after == deadline
    real = svc.clock
    svc.clock = lambda: deadline - timedelta(seconds=1)
    assert tryon_retention.delete_expired_results(svc) == 0
    svc.clock = lambda: deadline + timedelta(seconds=1)
    assert tryon_retention.delete_expired_results(svc) == 1
    svc.clock = real
    assert client.get(f"/v1/try-ons/{job_id}", headers=headers).status_code == 404
