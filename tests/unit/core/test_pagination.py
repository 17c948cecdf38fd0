"""Cursor pages (shared/core/pagination.py): stable, newest first, and a cursor
from the client is checked before it reaches a query."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.core.errors import AppError
from shared.core.pagination import (
    CURSOR_PATTERN,
    MAX_PAGE,
    decode_cursor,
    encode_cursor,
    is_uuid,
)
from shared.uploads import use_cases as uploads
from tests.unit.harness import START, Harness

ROW = "0b7f6c1e-3a2d-4c5b-9e8f-112233445566"


def test_a_cursor_round_trips():
    assert decode_cursor(encode_cursor(START, ROW)) == (START, ROW)
    assert "=" not in encode_cursor(START, ROW)


def b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "", "!!!", b64("text"), b64([START.isoformat()]), b64(["not a date", ROW]),
    b64([START.replace(tzinfo=None).isoformat(), ROW]),  # naive
    b64([START.isoformat(), 42]), b64([START.isoformat(), "not-a-uuid"]),
    b64([START.isoformat(), ROW.upper()]), "[" * 5000,
    # Timestamps that overflow once in UTC, or lie outside what a row can have.
    b64(["9999-12-31T23:59:59-14:00", ROW]), b64(["0001-01-01T00:00:00+14:00", ROW]),
    b64(["1969-12-31T23:59:59+00:00", ROW]), b64([{"a": 1}, ROW]),
    base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode(),
])
def test_anything_else_is_a_bad_request(cursor: str):
    with pytest.raises(AppError) as error:
        decode_cursor(cursor)
    assert error.value.code == "request.invalid"


def test_is_uuid_takes_the_canonical_form_only():
    assert is_uuid(ROW)
    for other in (ROW.upper(), ROW.replace("-", ""), "{" + ROW + "}", "urn:uuid:" + ROW, "", None):
        assert not is_uuid(other)  # type: ignore[arg-type]


def test_pages_are_stable_while_rows_arrive(harness: Harness):
    ids = []
    for _ in range(5):
        issued, _ = harness.issue()
        ids.append(issued.upload.id)
    harness.advance(1)
    seen: list[str] = []
    cursor = None
    while True:
        page = uploads.list_for_user(harness.svc, "alice", limit=2, cursor=cursor, status=None)
        seen += [u.id for u in page.items]
        if page.next_cursor is None:
            break
        harness.issue()  # a newer row arriving between pages is not seen in this walk
        cursor = page.next_cursor
    # Five rows of one timestamp: ordered by id, each once.
    assert seen == sorted(ids, reverse=True)


def test_the_page_size_is_bounded(harness: Harness):
    for n in range(3):
        harness.issue()
        harness.advance(timedelta(seconds=n))
    assert len(uploads.list_for_user(harness.svc, "alice", limit=0, cursor=None,
                                     status=None).items) == 1
    assert MAX_PAGE == 100


@given(st.from_regex(CURSOR_PATTERN, fullmatch=True))
@hypothesis_settings(max_examples=200, deadline=None)
def test_every_string_of_the_documented_pattern_decodes(cursor: str):
    if cursor:
        created, row_id = decode_cursor(cursor)
        assert created.tzinfo is not None and is_uuid(row_id)
        assert decode_cursor(encode_cursor(created, row_id)) == (created, row_id)


def test_a_cursor_of_the_earlier_format_is_still_read():
    assert decode_cursor(b64([START.isoformat(), ROW])) == (START, ROW)
    assert re.fullmatch(CURSOR_PATTERN, encode_cursor(START, ROW))
