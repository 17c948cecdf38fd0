"""MemoryStorage (the unit tests' object store) behaves as the S3 store does at the
interface: the same values, the same errors; and BucketStore binds one bucket."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from shared.storage.base import (
    BucketStore,
    ObjectInfo,
    ObjectMissing,
    StorageUnavailable,
    sha256_b64,
)
from shared.storage.memory import MemoryStorage
from tests.unit.harness import START, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def storage(clock: FakeClock) -> MemoryStorage:
    return MemoryStorage(clock=clock)


def test_put_head_get_delete(storage: MemoryStorage, clock: FakeClock):
    storage.put_bytes("b", "k/one.jpg", b"12345", content_type="image/jpeg")
    assert storage.head("b", "k/one.jpg") == ObjectInfo(
        size=5, content_type="image/jpeg", checksum_sha256=sha256_b64(b"12345"),
        last_modified=START)
    assert storage.get_bytes("b", "k/one.jpg", max_bytes=100) == b"12345"
    # One byte past the cap, so the caller can tell "too large" from "exactly the cap".
    assert storage.get_bytes("b", "k/one.jpg", max_bytes=3) == b"1234"
    storage.delete("b", "k/one.jpg")
    with pytest.raises(ObjectMissing):
        storage.head("b", "k/one.jpg")
    storage.delete("b", "k/one.jpg")  # deleting what is gone is not an error


def test_missing_objects_raise_object_missing(storage: MemoryStorage):
    for call in (lambda: storage.head("b", "nope"),
                 lambda: storage.get_bytes("b", "nope", max_bytes=10),
                 lambda: storage.set_tags("b", "nope", {"a": "b"}),
                 lambda: storage.renew("b", "nope", {"a": "b"}),
                 lambda: storage.tags("b", "nope")):
        with pytest.raises(ObjectMissing):
            call()


def test_buckets_are_separate_and_listing_is_by_prefix(storage: MemoryStorage,
                                                       clock: FakeClock):
    storage.put_bytes("b", "uploads/u/2.jpg", b"x", content_type="image/jpeg")
    clock.advance(5)
    storage.put_bytes("b", "uploads/u/1.jpg", b"x", content_type="image/jpeg")
    storage.put_bytes("b", "results/u/1.jpg", b"x", content_type="image/jpeg")
    storage.put_bytes("other", "uploads/u/3.jpg", b"x", content_type="image/jpeg")
    assert storage.list_keys("b", "uploads/") == [
        ("uploads/u/1.jpg", START + timedelta(seconds=5)), ("uploads/u/2.jpg", START)]
    assert storage.list_keys("b", "nothing/") == []
    assert [k for k, _ in storage.list_keys("other", "")] == ["uploads/u/3.jpg"]


def test_tags_are_replaced_and_renew_restarts_the_age(storage: MemoryStorage,
                                                      clock: FakeClock):
    storage.put_bytes("b", "r.jpg", b"x", content_type="image/jpeg",
                      tags={"retention": "temporary"})
    assert storage.tags("b", "r.jpg") == {"retention": "temporary"}
    storage.set_tags("b", "r.jpg", {"retention": "kept"})
    assert storage.tags("b", "r.jpg") == {"retention": "kept"}
    assert storage.head("b", "r.jpg").last_modified == START  # tagging is no rewrite
    clock.advance(hours=3)
    storage.renew("b", "r.jpg", {"retention": "temporary"})
    assert storage.tags("b", "r.jpg") == {"retention": "temporary"}
    assert storage.head("b", "r.jpg").last_modified == START + timedelta(hours=3)
    # A copy of the tags is kept: the caller's dict is not the stored one.
    tags = {"retention": "kept"}
    storage.set_tags("b", "r.jpg", tags)
    tags["retention"] = "changed"
    assert storage.tags("b", "r.jpg") == {"retention": "kept"}


def test_a_store_that_is_down_refuses_every_call(storage: MemoryStorage):
    storage.put_bytes("b", "k", b"x", content_type="image/jpeg")
    storage.down = True
    for call in (lambda: storage.head("b", "k"),
                 lambda: storage.get_bytes("b", "k", max_bytes=1),
                 lambda: storage.put_bytes("b", "k2", b"x", content_type="image/jpeg"),
                 lambda: storage.set_tags("b", "k", {}),
                 lambda: storage.renew("b", "k", {}),
                 lambda: storage.delete("b", "k"),
                 lambda: storage.list_keys("b", ""),
                 lambda: storage.ping("b")):
        with pytest.raises(StorageUnavailable):
            call()
    storage.down = False
    assert storage.get_bytes("b", "k", max_bytes=1) == b"x"  # nothing was lost


def test_presigned_put_checks_what_s3_checks(storage: MemoryStorage, clock: FakeClock):
    data = b"selfie-bytes"
    put = storage.presign_put("b", "uploads/u/x.jpg", content_type="image/jpeg",
                              content_length=len(data), checksum_sha256=sha256_b64(data),
                              expires_in=300)
    assert put.headers == {"Content-Type": "image/jpeg", "Content-Length": str(len(data)),
                           "If-None-Match": "*", "x-amz-checksum-sha256": sha256_b64(data)}
    with pytest.raises(ValueError, match="size"):
        storage.put_url(put.url, data + b"!", put.headers)
    with pytest.raises(ValueError, match="checksum"):
        storage.put_url(put.url, data.upper(), put.headers)
    storage.put_url(put.url, data, put.headers)
    assert storage.get_bytes("b", "uploads/u/x.jpg", max_bytes=100) == data
    with pytest.raises(FileExistsError):  # If-None-Match: a URL is good for one PUT
        storage.put_url(put.url, data, put.headers)
    late = storage.presign_put("b", "uploads/u/y.jpg", content_type="image/jpeg",
                               content_length=len(data), checksum_sha256=None, expires_in=300)
    assert "x-amz-checksum-sha256" not in late.headers
    clock.advance(301)
    with pytest.raises(PermissionError):
        storage.put_url(late.url, data, late.headers)


def test_bucket_store_binds_one_bucket(storage: MemoryStorage, clock: FakeClock):
    store = BucketStore(storage, "uploads-bucket")
    store.put_bytes("a/1.jpg", b"one", content_type="image/jpeg", tags={"t": "1"})
    assert set(storage.buckets) == {"uploads-bucket"}
    assert store.head("a/1.jpg").size == 3
    assert store.get_bytes("a/1.jpg", max_bytes=10) == b"one"
    assert store.list_keys("a/") == [("a/1.jpg", START)]
    store.set_tags("a/1.jpg", {"t": "2"})
    assert storage.tags("uploads-bucket", "a/1.jpg") == {"t": "2"}
    clock.advance(1)
    store.renew("a/1.jpg", {"t": "3"})
    assert store.head("a/1.jpg").last_modified == START + timedelta(seconds=1)
    assert store.presign_get("a/1.jpg", expires_in=60).startswith("memory://uploads-bucket/a/1.jpg?")
    store.ping()
    store.delete("a/1.jpg")
    assert store.list_keys("") == []
    with pytest.raises(ObjectMissing):
        BucketStore(storage, "other-bucket").head("a/1.jpg")


def test_services_stores_follow_settings_and_storage(harness):
    svc = harness.svc
    assert svc.upload_store == BucketStore(harness.storage, svc.settings.uploads_bucket)
    assert svc.result_store == BucketStore(harness.storage, svc.settings.processed_bucket)
    assert svc.settings.uploads_bucket != svc.settings.processed_bucket
    svc.settings = replace(svc.settings, processed_bucket="elsewhere")
    other = MemoryStorage(clock=harness.clock)
    svc.storage = other
    svc.result_store.put_bytes("results/u/x.jpg", b"x", content_type="image/jpeg")
    assert set(other.buckets) == {"elsewhere"} and not harness.storage.buckets
