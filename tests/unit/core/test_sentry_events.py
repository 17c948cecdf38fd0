"""What every Sentry event carries and loses on its way out (issue 16): the
correlation id as a tag; no request body, cookie, credential header or command
line; no signed URL, token or fal media link anywhere in it."""

from __future__ import annotations

import json

from shared.core.observability import (
    CORRELATION_TAG,
    reset_correlation_id,
    scrub_sentry_event,
    set_correlation_id,
)

SIGNED = "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2Fx&X-Amz-Signature=deadbeef00"
FAL_MEDIA = "https://v3.fal.media/files/zebra/abc123.png"


def event() -> dict:
    return {
        "message": f"failed fetching {SIGNED} and {FAL_MEDIA}",
        "request": {"url": "https://api.example/v1/uploads/presign", "method": "POST",
                    "data": {"checksum": "c2VjcmV0LWJvZHk="}, "cookies": {"s": "cookie-value"},
                    "headers": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ6In0.sig",
                                "Cookie": "s=cookie-value", "X-Request-ID": "r-1",
                                "Content-Type": "application/json"}},
        "extra": {"sys.argv": ["celery", "--broker", "redis://:hunter2@redis:6379/0"]},
    }


def test_an_event_in_a_request_is_tagged_with_its_correlation_id_and_loses_its_secrets():
    token = set_correlation_id("corr-42")
    try:
        scrubbed = scrub_sentry_event(event(), None)
    finally:
        reset_correlation_id(token)
    assert scrubbed["tags"] == {CORRELATION_TAG: "corr-42"}
    assert scrubbed["request"]["headers"] == {"X-Request-ID": "r-1",
                                              "Content-Type": "application/json"}
    assert "data" not in scrubbed["request"] and "cookies" not in scrubbed["request"]
    assert "sys.argv" not in scrubbed["extra"]
    text = json.dumps(scrubbed)
    for secret in ("deadbeef00", "AKIA", "abc123", "c2VjcmV0LWJvZHk", "cookie-value",
                   "hunter2", "eyJhbGci"):
        assert secret not in text, secret


def test_a_task_tag_already_on_the_event_is_kept_and_none_is_invented():
    tagged = {"tags": {CORRELATION_TAG: "from-the-task"}}
    token = set_correlation_id("something-else")
    try:
        assert scrub_sentry_event(tagged, None)["tags"] == {CORRELATION_TAG: "from-the-task"}
    finally:
        reset_correlation_id(token)
    assert "tags" not in scrub_sentry_event({"message": "outside any request"}, None)
