"""Redaction of signed URLs in logs and Sentry events."""

from __future__ import annotations

import io
import json
import logging

from shared.core.observability import json_handler, redact, scrub_sentry_event

SIGNED = ("https://s3.example.com/bucket/uploads/u/x.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIA%2F20261123&X-Amz-Date=20261123T000000Z&X-Amz-Expires=300"
          "&X-Amz-SignedHeaders=host&X-Amz-Signature=deadbeef")


def test_redact_removes_the_query_of_signed_urls():
    text = redact(f"fetching {SIGNED} now")
    assert "X-Amz" not in text and "deadbeef" not in text
    assert "https://s3.example.com/bucket/uploads/u/x.jpg?[redacted] now" in text
    assert redact("Authorization: Bearer abc.def.ghi") == "Authorization: Bearer [redacted]"


def test_log_records_are_redacted_including_args_and_exceptions():
    stream = io.StringIO()
    logger = logging.getLogger("test.redaction")
    logger.addHandler(json_handler(stream))
    logger.propagate = False
    try:
        logger.warning("url %s", SIGNED)
        try:
            raise ValueError(SIGNED)
        except ValueError:
            logger.exception("boom")
    finally:
        logger.handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    assert "deadbeef" not in stream.getvalue()


def test_sentry_events_are_scrubbed():
    event = {"message": SIGNED, "extra": {"nested": [SIGNED]},
             "request": {"url": SIGNED, "headers": {"Authorization": "Bearer t0k3n"}}}
    scrubbed = scrub_sentry_event(event, None)
    assert "deadbeef" not in json.dumps(scrubbed) and "t0k3n" not in json.dumps(scrubbed)


def test_tasks_sent_from_a_request_carry_its_correlation_id():
    """The API sends tasks by name through shared.core.tasks; its publish hook stamps
    the correlation id under a header Celery does not reserve."""
    from celery import signals

    from shared.core.observability import reset_correlation_id, set_correlation_id
    from shared.core.tasks import CORRELATION_HEADER, SENT_AT_HEADER

    headers: dict[str, object] = {}
    token = set_correlation_id("req-42")
    try:
        signals.before_task_publish.send(sender="uploads.validate", headers=headers)
    finally:
        reset_correlation_id(token)
    assert headers[CORRELATION_HEADER] == "req-42"
    assert isinstance(headers[SENT_AT_HEADER], float)
    assert CORRELATION_HEADER != "correlation_id"  # Celery drops that one
