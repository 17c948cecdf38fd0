"""What fal reported, parsed once (shared/fal/completions.py)."""

from __future__ import annotations

import pytest

from shared.fal.completions import Completion, completion_from_webhook, model_error_type
from shared.fal.gateway import classify_http


def test_an_ok_webhook_is_a_success_named_by_the_signed_request_id():
    body = {"request_id": "from-body", "status": "OK",
            "payload": {"images": [{"url": "https://v3.fal.media/files/x.jpg"}]}}
    assert completion_from_webhook(body, "signed-id") == Completion(True, "signed-id")
    # The payload's links are not kept: the worker fetches the result by id.
    assert completion_from_webhook(body).image_urls == ()
    assert completion_from_webhook(body).request_id == "from-body"


@pytest.mark.parametrize(("body", "error_type"), [
    ({"status": "ERROR", "payload": {"detail": [{"type": "content_policy_violation",
                                                 "msg": "x"}]}}, "content_policy_violation"),
    ({"status": "ERROR", "payload": {"error_type": "runner_disconnected"}}, "runner_disconnected"),
    ({"status": "ERROR", "error_type": "request_timeout", "payload": None}, "request_timeout"),
    ({"status": "ERROR", "payload": {"detail": "a string"}, "error": "boom"}, None),
    ({"request_id": "r"}, None),  # no status: not a success
])
def test_an_error_webhook_names_its_type(body, error_type):
    parsed = completion_from_webhook({"request_id": "r", **body})
    assert parsed == Completion(False, "r", error_type=error_type)


def test_task_arguments_carry_no_image_links():
    completion = Completion(True, "r", image_urls=("https://v3.fal.media/face.jpg",))
    assert completion.as_task_args() == {"ok": True, "request_id": "r", "error_type": None}
    assert Completion(**completion.as_task_args()) == Completion(True, "r")


@pytest.mark.parametrize(("payload", "expected"), [
    ({"detail": [{"type": "image_too_large"}]}, "image_too_large"),
    ({"detail": [{"type": "a"}, {"type": "b"}]}, "a"),
    ({"detail": [{"msg": "no type"}]}, None),
    ({"detail": [{"type": ""}]}, None),
    ({"detail": []}, None),
    ({"detail": ["text"]}, None),
    ({"detail": "text"}, None),
    ([{"type": "x"}], None),
    ("text", None),
    (None, None),
])
def test_model_error_type(payload, expected):
    assert model_error_type(payload) == expected


@pytest.mark.parametrize(("status", "headers", "error_type", "model", "code", "retriable"), [
    (502, {}, None, None, "fal.unavailable", True),
    (500, {}, "something_else", None, "fal.unavailable", False),
    (500, {"X-Fal-Needs-Retry": "TRUE"}, None, None, "fal.unavailable", True),
    (500, {"x-fal-retryable": "false"}, None, None, "fal.unavailable", False),
    (422, {}, None, "generation_timeout", "fal.unavailable", True),
    (422, {}, None, "downstream_service_unavailable", "fal.unavailable", True),
    (422, {}, None, "no_media_generated", "fal.no_result", False),
    (422, {}, None, "image_too_large", "fal.rejected", False),
    (422, {}, None, None, "fal.rejected", False),
    (408, {}, None, None, "fal.rejected", False),
    # A model error decides, whatever the status says.
    (500, {}, "internal_error", "content_policy_violation", "fal.content_policy", False),
])
def test_more_http_failures(status, headers, error_type, model, code, retriable):
    failure = classify_http(status, headers, error_type, model)
    assert (failure.code, failure.retriable, failure.status) == (code, retriable, status)
    assert failure.error_type == (model or error_type)
