"""No new uploads or try-ons for a user whose erasure is unfinished."""

from __future__ import annotations

import pytest

from shared.access.erasure_lock import refuse_while_erasing
from shared.core.errors import ERROR_KINDS, AppError
from shared.models import ErasureRequest, ErasureStatus
from shared.privacy.erasure import erase
from shared.privacy.erasure_requests import request_erasure
from tests.unit.harness import Harness


def refused(harness: Harness, user: str) -> list[bool]:
    """Whether the guard refuses, inside an ORM session and on a Core connection."""
    answers = []
    for begin in (harness.svc.sessions.begin, harness.svc.engine.begin):
        with begin() as conn:
            try:
                refuse_while_erasing(conn, user)
                answers.append(False)
            except AppError as error:
                assert error.code == "user.erasure_in_progress"
                answers.append(True)
    return answers


def test_refused_while_pending_or_running_and_allowed_once_done(harness: Harness):
    assert refused(harness, "alice") == [False, False]
    request = request_erasure(harness.svc, "alice")
    assert refused(harness, "alice") == [True, True]
    assert refused(harness, "bob") == [False, False]
    with harness.svc.sessions.begin() as session:
        session.get(ErasureRequest, request.id).status = ErasureStatus.RUNNING
    assert refused(harness, "alice") == [True, True]
    with harness.svc.sessions.begin() as session:
        session.get(ErasureRequest, request.id).lease_owner = None
        session.get(ErasureRequest, request.id).lease_until = None
    assert erase(harness.svc, request.id, owner="t") == ErasureStatus.DONE
    assert refused(harness, "alice") == [False, False]


def test_the_refusal_is_a_retriable_conflict():
    kind = ERROR_KINDS["user.erasure_in_progress"]
    assert (kind.status, kind.retriable) == (409, True)
    with pytest.raises(KeyError):
        AppError("user.no_such_code")
