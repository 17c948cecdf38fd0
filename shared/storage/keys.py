"""Object keys, prefixes and retention tags: built in one place, keys checked
against a whitelist before use."""

from __future__ import annotations

import re
import uuid

# Matched whole (fullmatch): `$` would also match before a final newline.
USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heif",
}
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
RAW_KEY = re.compile(
    rf"uploads/(?P<user>[A-Za-z0-9_-]{{1,64}})/(?P<id>{_UUID})\.(?:jpg|png|webp|heic|heif)")
SANITIZED_KEY = re.compile(rf"sanitized/[A-Za-z0-9_-]{{1,64}}/{_UUID}\.jpg")
RESULT_KEY = re.compile(rf"results/[A-Za-z0-9_-]{{1,64}}/{_UUID}(?:_thumb)?\.jpg")
# The uploads bucket holds raw uploads and sanitized selfies; the processed bucket
# holds results. Every object of a user lives under `<prefix><user id>/`.
RAW_PREFIX, SANITIZED_PREFIX, RESULT_PREFIX = "uploads/", "sanitized/", "results/"
UPLOAD_PREFIXES = (RAW_PREFIX, SANITIZED_PREFIX)
# `hairfluencer storage check` writes only here (in both buckets) and deletes what it
# wrote. No sweep lists it: the orphan sweep, retention and erasure list the user
# prefixes above, none of which this one starts with.
CHECK_PREFIX = "_storage-check/"

# The tag the processed bucket's lifecycle rule reads: results expire unless kept.
RETENTION_TAG = "retention"
TEMPORARY, KEPT = "temporary", "kept"


def retention_tags(value: str) -> dict[str, str]:
    return {RETENTION_TAG: value}


class InvalidKey(ValueError):
    pass


def check_user_id(user_id: str) -> str:
    if not USER_ID.fullmatch(user_id):
        raise InvalidKey("user id outside [A-Za-z0-9_-]{1,64}")
    return user_id


def raw_upload_key(user_id: str, upload_id: uuid.UUID | str, content_type: str) -> str:
    if content_type not in EXTENSIONS:
        raise InvalidKey("no key for this content type")
    return _checked(f"{RAW_PREFIX}{check_user_id(user_id)}/{upload_id}.{EXTENSIONS[content_type]}",
                    RAW_KEY)


def sanitized_key(user_id: str, upload_id: str) -> str:
    return _checked(f"{SANITIZED_PREFIX}{check_user_id(user_id)}/{upload_id}.jpg", SANITIZED_KEY)


def result_keys(user_id: str, job_id: str) -> tuple[str, str]:
    """(result, thumbnail) of one try-on in the processed bucket."""
    base = f"{RESULT_PREFIX}{check_user_id(user_id)}/{job_id}"
    return _checked(f"{base}.jpg", RESULT_KEY), _checked(f"{base}_thumb.jpg", RESULT_KEY)


def user_upload_prefixes(user_id: str) -> list[str]:
    """The prefixes in the uploads bucket that hold every upload object of a user."""
    return [f"{prefix}{check_user_id(user_id)}/" for prefix in UPLOAD_PREFIXES]


def user_result_prefix(user_id: str) -> str:
    return f"{RESULT_PREFIX}{check_user_id(user_id)}/"


def check_key(run_id: uuid.UUID, name: str) -> str:
    """A key of one storage-check run: `_storage-check/<run id>/<name>`."""
    return f"{CHECK_PREFIX}{run_id}/{name}"


def parse_raw_key(key: str) -> tuple[str, str] | None:
    """(user id, upload id) of a well-formed raw key, else None."""
    match = RAW_KEY.fullmatch(key)
    return (match["user"], match["id"]) if match else None


def _checked(key: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(key):
        raise InvalidKey("key outside the whitelist")
    return key
