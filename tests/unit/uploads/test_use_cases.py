"""Uploads on the harness: presign → PUT → confirm (the checks against what was
declared) → delete; listing and reading."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.core.errors import AppError
from shared.core.task_names import VALIDATE_UPLOAD
from shared.models import DailyQuota, UploadStatus
from shared.privacy.erasure_requests import request_erasure
from shared.storage.base import sha256_b64
from shared.storage.keys import sanitized_key
from shared.uploads import use_cases as uploads
from tests.conftest import fixture_bytes
from tests.unit.harness import START, Harness


def code_of(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(AppError) as error:
        call()
    return error.value.code

def quota_used(harness: Harness, user: str, kind: str) -> int:
    """What the user's daily quota counter holds (0: never charged)."""
    with harness.svc.sessions() as session:
        row = session.get(DailyQuota, (user, kind))
    return row.used if row is not None else 0


def test_presign_records_the_issuance_then_signs_for_exactly_these_bytes(harness: Harness):
    data = fixture_bytes("astronaut.jpg")
    issued = uploads.presign(harness.svc, "alice", content_type="image/jpeg",
                             content_length=len(data), checksum=sha256_b64(data),
                             daily_limit=5)
    assert quota_used(harness, "alice", "presign") == 1
    row = harness.upload(issued.upload.id)
    s = harness.svc.settings
    assert (row.status, row.user_id, row.key, row.declared_size, row.declared_checksum) == (
        UploadStatus.PENDING, "alice", f"uploads/alice/{row.id}.jpg", len(data), sha256_b64(data))
    assert row.url_expires_at == START + timedelta(seconds=s.presign_ttl_seconds)
    assert row.delete_after == START + timedelta(hours=s.upload_retention_hours)
    assert issued.put.headers["Content-Length"] == str(len(data))
    assert issued.put.headers["x-amz-checksum-sha256"] == sha256_b64(data)
    assert issued.put.url.startswith(f"memory://{s.uploads_bucket}/{row.key}?")
    assert issued.max_bytes == s.max_upload_bytes
    assert harness.audit(row.id) == ["upload.issued"]
    assert harness.objects() == set()  # nothing is stored until the app PUTs


@pytest.mark.parametrize(("content_type", "length", "checksum", "code"), [
    ("image/gif", 10, None, "upload.unsupported_type"),
    ("image/jpeg", 16 * 1024 * 1024 + 1, None, "upload.too_large"),
    ("image/jpeg", 0, None, "request.invalid"),
    ("image/jpeg", 10, "not base64!", "request.invalid"),
    ("image/jpeg", 10, sha256_b64(b"x")[:-4], "request.invalid"),  # not 32 bytes
])
def test_bad_presigns_cost_nothing_and_record_nothing(harness: Harness, content_type, length,
                                                      checksum, code):
    assert code_of(lambda: uploads.presign(
        harness.svc, "alice", content_type=content_type, content_length=length,
        checksum=checksum, daily_limit=5)) == code
    assert quota_used(harness, "alice", "presign") == 0
    assert uploads.list_for_user(harness.svc, "alice", limit=10, cursor=None,
                                 status=None).items == []


def test_presign_is_refused_while_the_user_is_being_erased(harness: Harness):
    request_erasure(harness.svc, "alice")
    assert code_of(lambda: uploads.presign(harness.svc, "alice", content_type="image/jpeg",
                                           content_length=10, checksum=None,
                                           daily_limit=5)
                   ) == "user.erasure_in_progress"
    assert quota_used(harness, "alice", "presign") == 0
    uploads.presign(harness.svc, "bob", content_type="image/jpeg", content_length=10,
                    checksum=None)  # others are not affected


def test_confirm_hands_the_upload_to_validation(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    harness.advance(7)
    upload = uploads.confirm(harness.svc, "alice", issued.upload.key, width=640, height=480)
    assert upload.status == UploadStatus.VALIDATING
    assert (upload.size_bytes, upload.client_width, upload.client_height) == (len(data), 640, 480)
    assert upload.confirmed_at == START + timedelta(seconds=7)
    # Unclaimed, the lease is when the beat sends the validation again.
    assert upload.validation_lease_until == upload.confirmed_at + timedelta(
        seconds=harness.svc.settings.validation_stale_seconds)
    assert [(s.task, s.args) for s in harness.dispatch.sent] == [(VALIDATE_UPLOAD, (upload.id,))]
    assert harness.audit(upload.id) == ["upload.issued", "upload.confirmed"]
    assert code_of(lambda: uploads.confirm(harness.svc, "alice", issued.upload.key)
                   ) == "upload.already_confirmed"
    assert len(harness.dispatch.sent) == 1


def test_confirm_of_a_key_not_issued_to_the_user_is_forbidden(harness: Harness):
    issued, data = harness.issue("alice")
    harness.put(issued, data)
    key = issued.upload.key
    assert code_of(lambda: uploads.confirm(harness.svc, "mallory", key)) == "upload.forbidden_key"
    assert code_of(lambda: uploads.confirm(harness.svc, "alice", key + "x")
                   ) == "upload.forbidden_key"
    never_issued = key.replace(issued.upload.id, "00000000-0000-4000-8000-000000000000")
    assert code_of(lambda: uploads.confirm(harness.svc, "alice", never_issued)
                   ) == "upload.forbidden_key"
    assert harness.upload(issued.upload.id).status == UploadStatus.PENDING
    assert harness.dispatch.sent == []


def test_confirm_before_the_put_says_the_object_is_missing(harness: Harness):
    issued, data = harness.issue()
    assert code_of(lambda: uploads.confirm(harness.svc, "alice", issued.upload.key)
                   ) == "upload.object_missing"
    assert harness.upload(issued.upload.id).status == UploadStatus.PENDING  # may confirm later
    harness.put(issued, data)
    assert uploads.confirm(harness.svc, "alice", issued.upload.key).status == "validating"


@pytest.mark.parametrize(("stored", "content_type", "code"), [
    (lambda data: data + b"\0", "image/jpeg", "upload.size_mismatch"),
    (lambda data: data, "image/png", "upload.type_mismatch"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "image/jpeg", "upload.checksum_mismatch"),
])
def test_an_object_unlike_the_declaration_is_rejected_at_confirm(harness: Harness, stored,
                                                                 content_type, code):
    issued, data = harness.issue()
    # What S3 would have refused through the URL, put behind its back.
    harness.svc.upload_store.put_bytes(issued.upload.key, stored(data), content_type=content_type)
    assert code_of(lambda: uploads.confirm(harness.svc, "alice", issued.upload.key)) == code
    row = harness.upload(issued.upload.id)
    assert (row.status, row.rejection_code) == (UploadStatus.REJECTED, code)
    # The URL still lives: the bytes go, an empty placeholder keeps If-None-Match refusing.
    assert harness.svc.upload_store.get_bytes(row.key, max_bytes=10) == b""
    assert harness.dispatch.sent == []
    assert harness.audit(row.id) == ["upload.issued", "upload.rejected"]


def test_a_mismatch_after_the_url_expired_deletes_the_object(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    harness.svc.upload_store.put_bytes(issued.upload.key, data + b"!", content_type="image/jpeg")
    harness.advance(harness.svc.settings.presign_ttl_seconds
                    + harness.svc.settings.raw_purge_margin_seconds + 1)
    assert code_of(lambda: uploads.confirm(harness.svc, "alice", issued.upload.key)
                   ) == "upload.size_mismatch"
    assert harness.objects() == set()


def test_delete_removes_the_objects_and_marks_the_row(harness: Harness):
    upload = harness.ready_upload()
    assert harness.objects() == {upload.key, upload.sanitized_key}
    assert code_of(lambda: uploads.delete(harness.svc, "mallory", upload.id)) == "upload.not_found"
    harness.advance(30)
    uploads.delete(harness.svc, "alice", upload.id)
    row = harness.upload(upload.id)
    assert (row.status, row.deleted_at) == (UploadStatus.DELETED, START + timedelta(seconds=30))
    # The URL still lives: the raw key keeps an empty placeholder until it expires.
    assert harness.objects() == {upload.key}
    assert harness.svc.upload_store.get_bytes(upload.key, max_bytes=1) == b""
    uploads.delete(harness.svc, "alice", upload.id)  # idempotent
    assert harness.audit(upload.id).count("upload.deleted") == 1
    assert code_of(lambda: uploads.confirm(harness.svc, "alice", upload.key)) == "upload.not_found"


def test_delete_removes_a_sanitized_copy_its_row_never_recorded(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    uploads.confirm(harness.svc, "alice", issued.upload.key)
    orphan = sanitized_key("alice", issued.upload.id)  # a validator died after writing it
    harness.svc.upload_store.put_bytes(orphan, b"jpeg", content_type="image/jpeg")
    uploads.delete(harness.svc, "alice", issued.upload.id)
    assert orphan not in harness.objects()


def test_get_and_list_are_the_owner_s_only(harness: Harness):
    first = harness.ready_upload("alice")
    harness.advance(1)
    second = harness.ready_upload("alice", "coffee.jpg")
    harness.advance(1)
    harness.ready_upload("bob")
    assert uploads.get(harness.svc, "alice", first.id).id == first.id
    for user, upload_id in (("bob", first.id), ("alice", "not-a-uuid"),
                            ("alice", first.id.upper())):
        assert code_of(lambda u=user, i=upload_id: uploads.get(harness.svc, u, i)
                       ) == "upload.not_found"
    page = uploads.list_for_user(harness.svc, "alice", limit=1, cursor=None, status=None)
    assert [u.id for u in page.items] == [second.id]  # newest first
    rest = uploads.list_for_user(harness.svc, "alice", limit=1, cursor=page.next_cursor,
                                 status=None)
    assert [u.id for u in rest.items] == [first.id] and rest.next_cursor is None
    uploads.delete(harness.svc, "alice", first.id)
    assert [u.id for u in uploads.list_for_user(harness.svc, "alice", limit=10, cursor=None,
                                                status=None).items] == [second.id]
    assert [u.id for u in uploads.list_for_user(harness.svc, "alice", limit=10, cursor=None,
                                                status="deleted").items] == [first.id]
