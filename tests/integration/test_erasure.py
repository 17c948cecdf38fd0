"""DELETE /v1/me: stored before it is answered, readable by the app, resumed until
done whatever fails, and done means nothing of the user is left: no object under
the user's prefixes in either bucket, no row but the audit trail and the request,
no idempotency record. Real PostgreSQL, Redis, LocalStack S3 and the fal emulator."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from shared.core.i18n import MESSAGES
from shared.models import AuditEvent, ErasureRequest, TryOn, Upload
from shared.privacy import erasure
from shared.storage.base import StorageUnavailable
from shared.tryons import completion, submission
from shared.tryons import results as result_store
from tests.conftest import WorkerDied, fixture_bytes, shift_clock
from tests.integration.test_tryons import (
    assert_erased,
    job_row,
    queued_job,
    ready_job,
    start_job,
)
from tests.integration.test_upload_flow import presign, put, upload_ready

ASTRONAUT = fixture_bytes("astronaut.jpg")


def objects_of(svc, user_id: str) -> list[str]:
    return [key for store, prefix in erasure.user_locations(svc, user_id)
            for key, _ in store.list_keys(prefix)]


def rows_of(svc, user_id: str) -> int:
    with svc.sessions() as session:
        return sum(session.scalar(select(func.count()).select_from(model)
                                  .where(model.user_id == user_id)) for model in (Upload, TryOn))



def a_user_with_everything(client, auth, svc, dispatch, emulator, user: str) -> dict[str, Any]:
    """Results (one a favorite), a job in flight at fal, an upload validating, a URL
    issued and used but never confirmed, one issued and never used, an idempotency record."""
    headers = auth(user)
    _, upload, done_job, _ = ready_job(client, auth, svc, dispatch, user=user)
    assert client.put(f"/v1/try-ons/{done_job}/favorite", headers=headers).status_code == 200
    emulator.configure(job_faults=["never_complete"])
    in_flight = client.post("/v1/try-ons", headers={**headers, "Idempotency-Key": "k-1"}, json={
        "uploadId": upload["uploadId"], "hairstyleId": "bob", "locale": "en"}).get_json()["jobId"]
    dispatch.run_due(lambda: job_row(svc, in_flight).fal_request_id is not None, 10)
    dispatch.run_inline = False
    validating = presign(client, headers, ASTRONAUT).get_json()
    assert put(validating, ASTRONAUT).status_code == 200
    assert client.post("/v1/uploads/confirm", headers=headers,
                       json={"key": validating["key"]}).status_code == 202
    dispatch.run_inline = True
    unconfirmed = presign(client, headers, ASTRONAUT).get_json()
    assert put(unconfirmed, ASTRONAUT).status_code == 200
    never_used = presign(client, headers, ASTRONAUT).get_json()
    assert len(objects_of(svc, user)) == 6  # raw, sanitized, 2 results, 2 raw objects
    return {"headers": headers, "jobs": [done_job, in_flight],
            "uploads": [upload["uploadId"], validating["uploadId"], unconfirmed["uploadId"],
                        never_used["uploadId"]]}


def test_done_means_nothing_of_the_user_is_left(client, auth, svc, dispatch, emulator):
    user = a_user_with_everything(client, auth, svc, dispatch, emulator, "zed")
    other = upload_ready(client, auth("yan"), ASTRONAUT)
    headers = user["headers"]
    response = client.delete("/v1/me", headers=headers)
    assert response.status_code == 202
    accepted = response.get_json()
    assert accepted["status"] in ("pending", "running", "done")
    state = client.get("/v1/me/erasure", headers=headers).get_json()
    assert (state["erasureId"], state["status"]) == (accepted["erasureId"], "done")
    assert state["completedAt"]
    assert objects_of(svc, "zed") == []
    assert rows_of(svc, "zed") == 0
    assert svc.idempotency.forget_user("zed") == 0  # none left to forget
    assert emulator.stats()["cancels"] == 1  # the job in flight was canceled at fal
    for job_id in user["jobs"]:
        assert client.get(f"/v1/try-ons/{job_id}", headers=headers).status_code == 404
    for upload_id in user["uploads"]:
        assert client.get(f"/v1/uploads/{upload_id}", headers=headers).status_code == 404
    actions = assert_erased(client, headers, svc, "zed", untouched_upload=other["uploadId"])
    assert actions.count("user.erased") == 1 and actions.count("user.erasure_requested") == 1
    assert {"upload.issued", "tryon.succeeded", "tryon.deleted", "upload.deleted"} <= set(actions)
    # Done, the user may start again (the per-user request rate is 10/s: let it pass).
    time.sleep(2.1)
    assert client.post("/v1/uploads/presign", headers=headers, json={
        "contentType": "image/jpeg", "contentLength": 10}).status_code == 201


def test_a_second_request_returns_the_same_erasure(client, auth, svc, dispatch):
    headers = auth("abi")
    upload_ready(client, headers, ASTRONAUT)
    dispatch.broker_down = True
    first = client.delete("/v1/me", headers=headers).get_json()
    second = client.delete("/v1/me", headers=headers)
    assert second.status_code == 202 and second.get_json() == first
    dispatch.broker_down = False
    shift_clock(svc, 21)
    assert erasure.resume_unfinished(svc) == 1
    assert client.get("/v1/me/erasure", headers=headers).get_json()["status"] == "done"
    # After it finished, asking again reopens the same erasure (the user may have
    # uploaded since), and it finishes again.
    again = client.delete("/v1/me", headers=headers).get_json()
    assert again["erasureId"] == first["erasureId"]
    assert client.get("/v1/me/erasure", headers=headers).get_json()["status"] == "done"
    with svc.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ErasureRequest)) == 1
        requested = session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "user.erasure_requested", AuditEvent.user_id == "abi"))
    assert requested == 2  # the first request and the reopening; not the duplicate


def test_new_uploads_and_try_ons_are_refused_while_it_is_unfinished(client, auth, svc, dispatch):
    headers = auth("ben")
    upload = upload_ready(client, headers, ASTRONAUT)
    dispatch.broker_down = True
    client.delete("/v1/me", headers=headers)
    for locale in ("en", "es"):
        response = client.post("/v1/uploads/presign", headers={**headers, "Accept-Language": locale},
                               json={"contentType": "image/jpeg", "contentLength": 10})
        assert response.status_code == 409
        error = response.get_json()["error"]
        assert error["code"] == "user.erasure_in_progress" and error["retriable"] is True
        assert error["message"] == MESSAGES["user.erasure_in_progress"][locale]
        response = start_job(client, {**headers, "Accept-Language": locale}, upload["uploadId"])
        assert response.status_code == 409
        assert response.get_json()["error"]["code"] == "user.erasure_in_progress"
    with svc.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Upload)
                              .where(Upload.user_id == "ben")) == 1
        assert session.scalar(select(func.count()).select_from(TryOn)
                              .where(TryOn.user_id == "ben")) == 0
    # another user is not affected
    assert client.post("/v1/uploads/presign", headers=auth("bea"), json={
        "contentType": "image/jpeg", "contentLength": 10}).status_code == 201


def test_no_erasure_yet_is_404(client, auth):
    for locale in ("en", "es"):
        response = client.get("/v1/me/erasure", headers=auth("cid", Accept_Language=locale))
        assert response.status_code == 404
        error = response.get_json()["error"]
        assert (error["code"], error["message"]) == (
            "erasure.not_found", MESSAGES["erasure.not_found"][locale])


@pytest.mark.parametrize("failure", ["storage", "database"])
def test_storage_and_database_errors_are_retried_until_done(client, auth, svc, dispatch,
                                                            monkeypatch, failure):
    headers = auth("dee")
    upload_ready(client, headers, ASTRONAUT)
    upload_ready(client, headers, ASTRONAUT)
    real_erase_upload = erasure._erase_upload
    calls = {"n": 0}

    def failing_second(svc_: Any, upload_id: str) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # half way through: one upload gone, one left
            if failure == "storage":
                raise StorageUnavailable("ClientError SlowDown")
            raise OperationalError("DELETE", {}, Exception("terminating connection"))
        return real_erase_upload(svc_, upload_id)

    monkeypatch.setattr(erasure, "_erase_upload", failing_second)
    dispatch.broker_down = True
    erasure_id = client.delete("/v1/me", headers=headers).get_json()["erasureId"]
    dispatch.broker_down = False
    error = StorageUnavailable if failure == "storage" else OperationalError
    with pytest.raises(error):  # the task's autoretry takes it from here
        erasure.erase(svc, erasure_id, owner="task-1")
    with svc.sessions() as session:
        row = session.get(ErasureRequest, erasure_id)
    assert row.status == "running" and row.lease_owner is None and row.last_error
    assert rows_of(svc, "dee") == 1
    assert client.get("/v1/me/erasure", headers=headers).get_json()["status"] == "running"
    # If the retry is lost too, the beat sends it again once its release time passed.
    assert erasure.resume_unfinished(svc) == 0
    shift_clock(svc, 21)
    assert erasure.resume_unfinished(svc) == 1
    assert client.get("/v1/me/erasure", headers=headers).get_json()["status"] == "done"
    assert rows_of(svc, "dee") == 0 and objects_of(svc, "dee") == []


def test_a_run_whose_worker_died_is_resumed_when_its_lease_ends(client, auth, svc, dispatch,
                                                                monkeypatch):
    headers = auth("eli")
    upload_ready(client, headers, ASTRONAUT)

    def die(*_: Any) -> int:
        raise WorkerDied

    dispatch.broker_down = True
    erasure_id = client.delete("/v1/me", headers=headers).get_json()["erasureId"]
    dispatch.broker_down = False
    monkeypatch.setattr(erasure, "_sweep", die)
    with pytest.raises(WorkerDied):
        erasure.erase(svc, erasure_id, owner="task-1")
    monkeypatch.undo()
    shift_clock(svc, 21)  # past the request's first resend time, not past the lease
    assert erasure.resume_unfinished(svc) == 0
    assert erasure.erase(svc, erasure_id, owner="task-2") == "running"  # a live lease
    shift_clock(svc, 31)
    assert erasure.resume_unfinished(svc) == 1
    assert client.get("/v1/me/erasure", headers=headers).get_json()["status"] == "done"
    assert objects_of(svc, "eli") == []


def test_a_result_finished_after_its_job_was_deleted_is_not_written(client, auth, svc,
                                                                    dispatch, emulator,
                                                                    monkeypatch, settings):
    emulator.configure(webhook_mode="none")
    headers = auth("fia")
    job_id = queued_job(client, auth, dispatch, "fia")
    submission.run(svc, job_id)  # submitted; the poll is left undone
    real_render = result_store.render

    def deleted_meanwhile(data: bytes, max_pixels: int) -> result_store.Rendered:
        assert client.delete(f"/v1/try-ons/{job_id}", headers=headers).status_code == 204
        return real_render(data, max_pixels)

    monkeypatch.setattr(result_store, "render", deleted_meanwhile)
    assert wait_until_result_ready(emulator)
    completion.poll(svc, job_id, 1)
    assert objects_of_prefix(svc, f"results/fia/{job_id}") == []
    with svc.sessions() as session:
        assert session.get(TryOn, job_id) is None
        assert not session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.subject_id == job_id, AuditEvent.action == "tryon.succeeded"))


def wait_until_result_ready(emulator) -> bool:
    from devstack.procs import wait_until

    return wait_until(lambda: emulator.stats()["completed"] == 1, 10)


def objects_of_prefix(svc, prefix: str) -> list[str]:
    return [k for k, _ in svc.storage.list_keys(svc.settings.processed_bucket, prefix)]
