"""The orphan sweep (shared/privacy/orphans.py): objects no live row accounts for
go once they are older than any URL could be; live ones and young ones stay."""

from __future__ import annotations

from shared.models import TryOn
from shared.privacy.orphans import remove_orphans
from shared.storage.keys import raw_upload_key, result_keys, sanitized_key
from shared.tryons import use_cases as tryons
from shared.uploads import use_cases as uploads
from shared.uploads.retention import purge_raw_objects
from tests.unit.harness import Harness

NO_ROW = "00000000-0000-4000-8000-000000000000"


def older_than_any_url(harness: Harness) -> float:
    s = harness.svc.settings
    return s.presign_ttl_seconds + s.raw_purge_margin_seconds + 1


def test_objects_no_row_accounts_for_are_removed_and_live_ones_kept(harness: Harness):
    ready = harness.ready_upload()
    job = harness.succeeded_job(upload=ready)
    pending, data = harness.issue("alice", "coffee.jpg")
    harness.put(pending, data)  # not confirmed yet: its raw object is live
    deleted_job = harness.succeeded_job("bob")
    deleted_results = result_keys("bob", deleted_job.id)
    uploads_store, results_store = harness.svc.upload_store, harness.svc.result_store
    orphans = {
        raw_upload_key("alice", NO_ROW, "image/jpeg"): uploads_store,
        sanitized_key("alice", NO_ROW): uploads_store,
        # The sanitized copy of an upload that is not ready (a validator's leftover).
        sanitized_key("alice", pending.upload.id): uploads_store,
        result_keys("alice", NO_ROW)[0]: results_store,
        "uploads/not-a-key.txt": uploads_store,
    }
    for key, store in orphans.items():
        store.put_bytes(key, b"x", content_type="image/jpeg")
    # A job's row gone, its objects still there (a removal raced a finishing worker).
    with harness.svc.sessions.begin() as session:
        session.delete(session.get(TryOn, deleted_job.id))
    bobs = harness.upload(deleted_job.upload_id)
    live = {ready.key, ready.sanitized_key, job.result_key, job.thumbnail_key,
            pending.upload.key, bobs.key, bobs.sanitized_key}
    assert remove_orphans(harness.svc) == 0  # nothing is old enough yet
    harness.advance(older_than_any_url(harness))
    young = sanitized_key("alice", "11111111-1111-4111-8111-111111111111")
    uploads_store.put_bytes(young, b"x", content_type="image/jpeg")  # may be in the making
    assert remove_orphans(harness.svc) == len(orphans) + len(deleted_results)
    assert harness.objects() == live | {young}
    assert remove_orphans(harness.svc) == 0
    assert tryons.get(harness.svc, "alice", job.id).result_key in harness.objects()


def test_a_raw_object_whose_row_says_purged_is_an_orphan(harness: Harness):
    upload = harness.ready_upload()
    uploads.delete(harness.svc, "alice", upload.id)
    harness.advance(older_than_any_url(harness))
    assert purge_raw_objects(harness.svc) == 1
    # A late write re-created the raw key after the purge: no row accounts for it.
    harness.svc.upload_store.put_bytes(upload.key, b"x", content_type="image/jpeg")
    harness.advance(older_than_any_url(harness))
    assert remove_orphans(harness.svc) == 1
    assert harness.objects() == set()
