"""Object keys are built in one place and checked against a whitelist."""

from __future__ import annotations

import uuid

import pytest

from shared.storage.keys import (
    EXTENSIONS,
    KEPT,
    RETENTION_TAG,
    TEMPORARY,
    InvalidKey,
    check_user_id,
    parse_raw_key,
    raw_upload_key,
    result_keys,
    retention_tags,
    sanitized_key,
    user_result_prefix,
    user_upload_prefixes,
)

UPLOAD_ID = "0b7f6c1e-3a2d-4c5b-9e8f-112233445566"
BAD_USER_IDS = ["", "a/b", "../x", "a" * 65, "ålice", "alice\n", "al ice", "a.b", "a%2Fb"]


@pytest.mark.parametrize(("content_type", "ext"), sorted(EXTENSIONS.items()))
def test_raw_keys_per_type_and_their_parse(content_type: str, ext: str):
    key = raw_upload_key("alice_1-X", UPLOAD_ID, content_type)
    assert key == f"uploads/alice_1-X/{UPLOAD_ID}.{ext}"
    assert parse_raw_key(key) == ("alice_1-X", UPLOAD_ID)


def test_a_uuid_object_is_accepted_as_upload_id():
    upload_id = uuid.uuid4()
    assert raw_upload_key("u", upload_id, "image/png") == f"uploads/u/{upload_id}.png"


@pytest.mark.parametrize("user_id", BAD_USER_IDS)
def test_user_ids_outside_the_whitelist_are_refused_everywhere(user_id: str):
    for build in (lambda: check_user_id(user_id),
                  lambda: raw_upload_key(user_id, UPLOAD_ID, "image/jpeg"),
                  lambda: sanitized_key(user_id, UPLOAD_ID),
                  lambda: result_keys(user_id, UPLOAD_ID),
                  lambda: user_upload_prefixes(user_id),
                  lambda: user_result_prefix(user_id)):
        with pytest.raises(InvalidKey):
            build()


def test_the_longest_user_id_is_accepted():
    assert check_user_id("a" * 64) == "a" * 64


@pytest.mark.parametrize("upload_id", ["not-a-uuid", UPLOAD_ID.upper(), UPLOAD_ID + "x",
                                       "../" + UPLOAD_ID, ""])
def test_ids_that_are_not_lowercase_uuids_are_refused(upload_id: str):
    with pytest.raises(InvalidKey):
        raw_upload_key("alice", upload_id, "image/jpeg")
    with pytest.raises(InvalidKey):
        sanitized_key("alice", upload_id)
    with pytest.raises(InvalidKey):
        result_keys("alice", upload_id)


def test_unknown_content_type_has_no_key():
    # presign refuses the type before a key is built (upload.unsupported_type).
    with pytest.raises(InvalidKey):
        raw_upload_key("alice", UPLOAD_ID, "image/gif")


def test_sanitized_and_result_keys():
    assert sanitized_key("alice", UPLOAD_ID) == f"sanitized/alice/{UPLOAD_ID}.jpg"
    assert result_keys("alice", UPLOAD_ID) == (f"results/alice/{UPLOAD_ID}.jpg",
                                               f"results/alice/{UPLOAD_ID}_thumb.jpg")


@pytest.mark.parametrize("key", [
    f"uploads/alice/{UPLOAD_ID}.jpg\n",  # `$` would have matched before the newline
    f"uploads/alice/{UPLOAD_ID}.gif",
    f"uploads/alice/{UPLOAD_ID}",
    f"sanitized/alice/{UPLOAD_ID}.jpg",
    f"uploads/alice/x/{UPLOAD_ID}.jpg",
    f"uploads/../{UPLOAD_ID}.jpg",
    f"/uploads/alice/{UPLOAD_ID}.jpg",
    f"uploads/alice/{UPLOAD_ID.upper()}.jpg",
    "",
])
def test_parse_raw_key_refuses_anything_else(key: str):
    assert parse_raw_key(key) is None


def test_every_object_of_a_user_is_under_its_prefixes():
    assert user_upload_prefixes("alice") == ["uploads/alice/", "sanitized/alice/"]
    assert user_result_prefix("alice") == "results/alice/"
    keys = [raw_upload_key("alice", UPLOAD_ID, "image/heic"), sanitized_key("alice", UPLOAD_ID),
            *result_keys("alice", UPLOAD_ID)]
    prefixes = [*user_upload_prefixes("alice"), user_result_prefix("alice")]
    assert all(any(k.startswith(p) for p in prefixes) for k in keys)
    # A user whose id starts with another's does not share its prefixes.
    assert not sanitized_key("alice2", UPLOAD_ID).startswith(tuple(prefixes))


def test_retention_tags():
    assert retention_tags(KEPT) == {RETENTION_TAG: "kept"}
    assert retention_tags(TEMPORARY) == {"retention": "temporary"}
