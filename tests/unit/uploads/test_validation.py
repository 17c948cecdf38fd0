"""Deep validation (shared/uploads/validation.py) on the harness: a confirmed
upload becomes `ready` with a sanitized copy, or `rejected` with its code."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import update

from shared.images.scanners import ScanVerdict
from shared.models import Upload, UploadStatus
from shared.storage.base import StorageUnavailable
from shared.storage.keys import sanitized_key
from shared.uploads import use_cases as uploads
from shared.uploads.validation import MAX_CRASHES, Outcome, validate_upload
from tests.conftest import fixture_bytes
from tests.unit.harness import Harness

LEASE_LEFT = timedelta(seconds=10)


def confirmed(harness: Harness, photo: str = "astronaut.jpg", *, content_type: str | None = None,
              data: bytes | None = None) -> Upload:
    issued, data = harness.issue("alice", photo, content_type=content_type, data=data)
    harness.put(issued, data)
    upload = uploads.confirm(harness.svc, "alice", issued.upload.key)
    harness.dispatch.take()
    return upload


def test_a_photo_becomes_ready_with_a_sanitized_copy(harness: Harness):
    upload = confirmed(harness)
    assert validate_upload(harness.svc, upload.id, owner="task-1") == Outcome("ready")
    row = harness.upload(upload.id)
    key = sanitized_key("alice", upload.id)
    assert (row.status, row.sanitized_key, row.validation_owner, row.validation_crashes) == (
        UploadStatus.READY, key, None, 0)
    clean = harness.svc.upload_store.get_bytes(key, max_bytes=10_000_000)
    assert row.sanitized_sha256 == hashlib.sha256(clean).hexdigest()
    with Image.open(io.BytesIO(clean)) as image:
        assert image.format == "JPEG"
        assert (image.width, image.height) == (row.width, row.height)
        assert not image.getexif()  # re-encoded without metadata
    assert harness.storage.head(harness.svc.settings.uploads_bucket, key).content_type == "image/jpeg"
    assert harness.audit(upload.id)[-1] == "upload.validated"
    # The raw object stays until its URL expired (the purge takes it: test_retention).
    assert harness.svc.upload_store.get_bytes(upload.key, max_bytes=10_000_000) == fixture_bytes(
        "astronaut.jpg")
    # A second delivery writes nothing twice.
    assert validate_upload(harness.svc, upload.id, owner="task-2") == Outcome("skipped")


def test_bytes_of_another_format_than_declared_are_rejected(harness: Harness):
    # A JPEG declared (and signed) as PNG passes confirm's header checks, not validation.
    upload = confirmed(harness, content_type="image/png")
    assert validate_upload(harness.svc, upload.id) == Outcome("rejected", "upload.type_mismatch")
    row = harness.upload(upload.id)
    assert (row.status, row.rejection_code, row.sanitized_key) == (
        UploadStatus.REJECTED, "upload.type_mismatch", None)
    assert harness.svc.upload_store.get_bytes(upload.key, max_bytes=10) == b""  # placeholder
    assert sanitized_key("alice", upload.id) not in harness.objects()


def test_undecodable_bytes_are_rejected(harness: Harness):
    truncated = fixture_bytes("coffee.jpg")[:5000]
    upload = confirmed(harness, data=truncated, content_type="image/jpeg")
    assert validate_upload(harness.svc, upload.id).code == "upload.undecodable"


def test_an_object_gone_before_validation_is_rejected(harness: Harness):
    upload = confirmed(harness)
    harness.svc.upload_store.delete(upload.key)
    assert validate_upload(harness.svc, upload.id) == Outcome("rejected", "upload.object_missing")


def test_bytes_changed_after_confirm_are_caught(harness: Harness):
    upload = confirmed(harness)
    data = fixture_bytes("astronaut.jpg")
    harness.svc.upload_store.put_bytes(upload.key, data[:-1] + b"\0", content_type="image/jpeg")
    assert validate_upload(harness.svc, upload.id).code == "upload.checksum_mismatch"
    other = confirmed(harness, "coffee.jpg")
    harness.svc.upload_store.put_bytes(other.key, b"short", content_type="image/jpeg")
    assert validate_upload(harness.svc, other.id).code == "upload.size_mismatch"


class Refuses:
    name = "test-scanner"

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def scan(self, data: bytes, image: Image.Image) -> ScanVerdict | None:
        self.seen.append(image.size)
        return ScanVerdict("upload.malware", "test signature")


def test_a_scanner_verdict_rejects(harness: Harness):
    scanner = Refuses()
    harness.svc.scanners = [scanner]
    upload = confirmed(harness)
    assert validate_upload(harness.svc, upload.id) == Outcome("rejected", "upload.malware")
    assert scanner.seen == [(512, 512)]  # it saw the decoded image
    assert harness.upload(upload.id).rejection_code == "upload.malware"


def test_storage_down_gives_the_claim_back_for_a_retry(harness: Harness):
    upload = confirmed(harness)
    harness.storage.down = True
    with pytest.raises(StorageUnavailable):
        validate_upload(harness.svc, upload.id, owner="task-1")
    row = harness.upload(upload.id)
    # Not a crash: the count is given back, and the lease ends when a re-send is due.
    assert (row.status, row.validation_owner, row.validation_crashes) == (
        UploadStatus.VALIDATING, None, 0)
    harness.storage.down = False
    assert validate_upload(harness.svc, upload.id, owner="task-1").status == "ready"


def test_a_live_claim_is_not_taken_but_its_own_redelivery_takes_over(harness: Harness):
    upload = confirmed(harness)
    with harness.svc.sessions.begin() as session:  # a worker claimed it and is working
        session.execute(update(Upload).where(Upload.id == upload.id).values(
            validation_owner="task-1", validation_crashes=1,
            validation_lease_until=harness.clock() + LEASE_LEFT))
    assert validate_upload(harness.svc, upload.id, owner="task-2") == Outcome("skipped")
    # The same message delivered again: its first run is gone, take over at once.
    assert validate_upload(harness.svc, upload.id, owner="task-1").status == "ready"


def test_an_image_that_keeps_crashing_its_worker_is_refused_unopened(harness: Harness):
    upload = confirmed(harness)
    with harness.svc.sessions.begin() as session:
        session.execute(update(Upload).where(Upload.id == upload.id).values(
            validation_crashes=MAX_CRASHES, validation_owner=None))
    assert validate_upload(harness.svc, upload.id) == Outcome(
        "rejected", "upload.validation_failed")
    assert harness.upload(upload.id).rejection_code == "upload.validation_failed"


def test_a_deleted_upload_gets_nothing_written(harness: Harness):
    upload = confirmed(harness)
    uploads.delete(harness.svc, "alice", upload.id)
    assert validate_upload(harness.svc, upload.id) == Outcome("skipped")
    assert sanitized_key("alice", upload.id) not in harness.objects()
    assert harness.upload(upload.id).status == UploadStatus.DELETED

