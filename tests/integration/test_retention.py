"""The beat's upload housekeeping against real PostgreSQL and S3: raw objects
purged only after their URL expired, never-confirmed uploads expired, selfies
deleted past retention, orphans removed; every deletion audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from shared.models import AuditEvent, Upload
from shared.privacy import orphans
from shared.storage.base import ObjectMissing
from shared.uploads import retention
from tests.conftest import fixture_bytes
from tests.integration.test_upload_flow import upload_ready

ASTRONAUT = fixture_bytes("astronaut.jpg")


def at(svc, delta: timedelta) -> None:
    moment = svc.clock() + delta
    svc.clock = lambda: moment


def row(svc, upload_id: str) -> Upload:
    with svc.sessions() as session:
        return session.get(Upload, upload_id)


def test_raw_object_is_kept_until_its_url_expired_then_purged(client, auth, svc, settings):
    body = upload_ready(client, auth("ivy"), ASTRONAUT)
    upload = row(svc, body["uploadId"])
    assert retention.purge_raw_objects(svc) == 0  # URL still alive: the object blocks re-PUTs
    assert svc.storage.head(settings.uploads_bucket, upload.key).size == len(ASTRONAUT)
    at(svc, timedelta(seconds=settings.presign_ttl_seconds + settings.raw_purge_margin_seconds + 1))
    assert retention.purge_raw_objects(svc) == 1
    with pytest.raises(ObjectMissing):
        svc.storage.head(settings.uploads_bucket, upload.key)
    # The sanitized copy stays until retention.
    assert svc.storage.head(settings.uploads_bucket, upload.sanitized_key).size > 0
    assert row(svc, upload.id).raw_purged_at is not None
    assert retention.purge_raw_objects(svc) == 0


def test_selfie_past_retention_is_deleted_and_audited(client, auth, svc, settings):
    body = upload_ready(client, auth("ivy"), ASTRONAUT)
    upload = row(svc, body["uploadId"])
    at(svc, timedelta(hours=settings.upload_retention_hours, seconds=1))
    assert retention.delete_past_retention(svc) == 1
    for key in (upload.key, upload.sanitized_key):
        with pytest.raises(ObjectMissing):
            svc.storage.head(settings.uploads_bucket, key)
    assert row(svc, upload.id).status == "deleted"
    with svc.sessions() as session:
        event = session.scalars(select(AuditEvent).where(
            AuditEvent.subject_id == upload.id, AuditEvent.action == "upload.deleted")).one()
    assert event.details == {"reason": "retention"}


def test_never_confirmed_upload_expires_and_its_bytes_go(client, auth, svc, settings):
    from tests.integration.test_upload_flow import presign, put

    issued = presign(client, auth("jack"), ASTRONAUT).get_json()
    assert put(issued, ASTRONAUT).status_code == 200
    assert retention.expire_unconfirmed(svc) == 0
    at(svc, retention.UNCONFIRMED_GRACE + timedelta(seconds=settings.presign_ttl_seconds + 1))
    assert retention.expire_unconfirmed(svc) == 1
    assert row(svc, issued["uploadId"]).status == "expired"
    with pytest.raises(ObjectMissing):
        svc.storage.head(settings.uploads_bucket, issued["key"])
    response = client.post("/v1/uploads/confirm", headers=auth("jack"),
                           json={"key": issued["key"]})
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "upload.expired"


def test_orphans_are_removed_but_live_objects_are_not(client, auth, svc, settings):
    body = upload_ready(client, auth("kim"), ASTRONAUT)
    live = row(svc, body["uploadId"])
    orphan = "uploads/kim/11111111-1111-4111-8111-111111111111.jpg"
    svc.storage.put_bytes(settings.uploads_bucket, orphan, b"x", content_type="image/jpeg")
    assert orphans.remove_orphans(svc) == 0  # too young to judge
    at(svc, timedelta(seconds=settings.presign_ttl_seconds + settings.raw_purge_margin_seconds + 5))
    assert orphans.remove_orphans(svc) >= 1
    with pytest.raises(ObjectMissing):
        svc.storage.head(settings.uploads_bucket, orphan)
    svc.storage.head(settings.uploads_bucket, live.key)
    svc.storage.head(settings.uploads_bucket, live.sanitized_key)


def test_results_without_a_job_are_removed(svc, settings):
    stray = "results/kim/22222222-2222-4222-8222-222222222222.jpg"
    svc.storage.put_bytes(settings.processed_bucket, stray, b"x", content_type="image/jpeg")
    at(svc, timedelta(seconds=settings.presign_ttl_seconds + settings.raw_purge_margin_seconds + 5))
    assert orphans.remove_orphans(svc) >= 1
    with pytest.raises(ObjectMissing):
        svc.storage.head(settings.processed_bucket, stray)


def test_a_selfie_is_kept_past_retention_while_a_try_on_needs_it(client, auth, svc, settings):
    from shared.models import TryOn

    body = upload_ready(client, auth("lou"), ASTRONAUT)
    now = svc.clock()
    with svc.sessions.begin() as session:
        session.add(TryOn(id="33333333-3333-4333-8333-333333333333", user_id="lou",
                          upload_id=body["uploadId"], hairstyle_id="bob", locale="en",
                          status="processing", created_at=now, updated_at=now, attempt=1,
                          favorite=False))
    at(svc, timedelta(hours=settings.upload_retention_hours, seconds=1))
    assert retention.delete_past_retention(svc) == 0
    with svc.sessions.begin() as session:
        session.get(TryOn, "33333333-3333-4333-8333-333333333333").status = "succeeded"
    assert retention.delete_past_retention(svc) == 1


def test_validation_that_never_finishes_is_given_up(client, auth, svc, settings, dispatch):
    from tests.integration.test_upload_flow import presign, put

    dispatch.run_inline = False
    issued = presign(client, auth("mo"), ASTRONAUT).get_json()
    assert put(issued, ASTRONAUT).status_code == 200
    assert client.post("/v1/uploads/confirm", headers=auth("mo"),
                       json={"key": issued["key"]}).status_code == 202
    at(svc, retention.VALIDATION_GIVE_UP + timedelta(seconds=1))
    retention.resend_stale_validations(svc)
    body = client.get(f"/v1/uploads/{issued['uploadId']}", headers=auth("mo")).get_json()
    assert body["status"] == "rejected"
    assert body["rejection"]["code"] == "upload.validation_failed"
    with pytest.raises(ObjectMissing):  # its URL expired long ago: no placeholder needed
        svc.storage.head(settings.uploads_bucket, issued["key"])


def test_rows_of_uploads_long_gone_are_purged_but_the_audit_trail_stays(client, auth, svc,
                                                                        settings):
    body = upload_ready(client, auth("noa"), ASTRONAUT)
    live = upload_ready(client, auth("noa"), ASTRONAUT)
    assert client.delete(f"/v1/uploads/{body['uploadId']}", headers=auth("noa")).status_code == 204
    at(svc, timedelta(seconds=settings.presign_ttl_seconds + settings.raw_purge_margin_seconds + 1))
    retention.purge_raw_objects(svc)  # the placeholder goes once the URL expired
    assert retention.purge_dead_upload_rows(svc) == 0  # still listed as `deleted` for a week
    at(svc, retention.DEAD_ROW_RETENTION)
    assert retention.purge_dead_upload_rows(svc) == 1
    assert row(svc, body["uploadId"]) is None
    assert row(svc, live["uploadId"]).status == "ready"
    assert client.get(f"/v1/uploads/{body['uploadId']}", headers=auth("noa")).status_code == 404
    with svc.sessions() as session:
        assert session.scalars(select(AuditEvent.action).where(
            AuditEvent.subject_id == body["uploadId"], AuditEvent.action == "upload.deleted")).one()
