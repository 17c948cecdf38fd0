"""The beat's upload passes (shared/uploads/retention.py), moving the harness clock."""

from __future__ import annotations

from datetime import timedelta

from shared.core.task_names import VALIDATE_UPLOAD
from shared.models import UploadStatus
from shared.tryons import use_cases as tryons
from shared.uploads import retention
from shared.uploads import use_cases as uploads
from tests.unit.harness import Harness


def url_gone(harness: Harness) -> float:
    """Seconds from issuance until the raw object may go (URL expired + margin)."""
    s = harness.svc.settings
    return s.presign_ttl_seconds + s.raw_purge_margin_seconds + 1


def test_unconfirmed_uploads_expire_an_hour_after_their_url(harness: Harness):
    never_put, _ = harness.issue()
    put_only, data = harness.issue("alice", "coffee.jpg")
    harness.put(put_only, data)
    harness.advance(harness.svc.settings.presign_ttl_seconds + 3500)  # within the grace
    assert retention.expire_unconfirmed(harness.svc) == 0
    assert harness.upload(put_only.upload.id).status == UploadStatus.PENDING
    harness.advance(200)
    assert retention.expire_unconfirmed(harness.svc) == 2
    for issued in (never_put, put_only):
        row = harness.upload(issued.upload.id)
        assert row.status == UploadStatus.EXPIRED and row.raw_purged_at == harness.clock()
        assert harness.audit(row.id)[-1] == "upload.expired"
    assert harness.objects() == set()
    assert retention.expire_unconfirmed(harness.svc) == 0


def test_raw_objects_are_purged_once_their_url_is_gone(harness: Harness):
    upload = harness.ready_upload()
    assert retention.purge_raw_objects(harness.svc) == 0
    harness.advance(url_gone(harness))
    assert retention.purge_raw_objects(harness.svc) == 1
    row = harness.upload(upload.id)
    assert row.raw_purged_at == harness.clock()
    assert harness.objects() == {upload.sanitized_key}  # the sanitized copy stays
    assert retention.purge_raw_objects(harness.svc) == 0


def test_an_upload_still_validating_keeps_its_raw_object(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    uploads.confirm(harness.svc, "alice", issued.upload.key)
    harness.advance(url_gone(harness))
    assert retention.purge_raw_objects(harness.svc) == 0
    assert issued.upload.key in harness.objects()


def test_selfies_past_retention_are_deleted_unless_a_try_on_needs_them(harness: Harness):
    kept = harness.ready_upload("alice")
    gone = harness.ready_upload("alice", "coffee.jpg")
    job = tryons.start(harness.svc, "alice", upload_id=kept.id, key=None, hairstyle_id="bob",
                       prompt=None, locale="en")
    harness.advance(hours=harness.svc.settings.upload_retention_hours - 1)
    assert retention.delete_past_retention(harness.svc) == 0
    harness.advance(hours=1, seconds=1)
    assert retention.delete_past_retention(harness.svc) == 1
    assert harness.upload(gone.id).status == UploadStatus.DELETED
    assert gone.sanitized_key not in harness.objects()
    assert harness.upload(kept.id).status == UploadStatus.READY  # its job is in flight
    tryons.remove(harness.svc, "alice", job.id)
    assert retention.delete_past_retention(harness.svc) == 1
    assert harness.upload(kept.id).status == UploadStatus.DELETED


def test_stale_validations_are_sent_again_and_given_up_after_an_hour(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    uploads.confirm(harness.svc, "alice", issued.upload.key)
    harness.dispatch.take()  # the message is lost
    assert retention.resend_stale_validations(harness.svc) == 0  # its lease still runs
    harness.advance(harness.svc.settings.validation_stale_seconds + 1)
    assert retention.resend_stale_validations(harness.svc) == 1
    assert [(s.task, s.args) for s in harness.dispatch.take()] == [
        (VALIDATE_UPLOAD, (issued.upload.id,))]
    assert retention.resend_stale_validations(harness.svc) == 0  # the re-send is waited for
    harness.dispatch.broker_down = True
    harness.advance(hours=1)
    assert retention.resend_stale_validations(harness.svc) == 0
    row = harness.upload(issued.upload.id)
    assert (row.status, row.rejection_code) == (UploadStatus.REJECTED, "upload.validation_failed")


def test_dead_rows_are_purged_after_a_week(harness: Harness):
    upload = harness.ready_upload()
    uploads.delete(harness.svc, "alice", upload.id)
    harness.advance(url_gone(harness))
    assert retention.purge_raw_objects(harness.svc) == 1
    assert harness.objects() == set()
    harness.advance(days=7, seconds=-url_gone(harness))  # a week from the deletion
    assert retention.purge_dead_upload_rows(harness.svc) == 0
    harness.advance(1)
    assert retention.purge_dead_upload_rows(harness.svc) == 1
    assert uploads.list_for_user(harness.svc, "alice", limit=10, cursor=None,
                                 status=None).items == []
    assert "upload.deleted" in harness.audit(upload.id)  # the trail stays


def test_the_selfie_deadline_counts_from_issuance(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    harness.advance(hours=2)  # the app confirms late
    uploads.confirm(harness.svc, "alice", issued.upload.key)
    row = harness.upload(issued.upload.id)
    assert row.delete_after - row.created_at == timedelta(
        hours=harness.svc.settings.upload_retention_hours)
    harness.advance(hours=22, seconds=1)
    assert retention.delete_past_retention(harness.svc) == 1  # validating or not
    assert harness.upload(row.id).status == UploadStatus.DELETED
