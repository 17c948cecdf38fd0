"""The harness's stand-ins do what tests rely on (tests/unit/harness.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.fal.gateway import FalFailure, FalResult, FalStatus
from shared.uploads.use_cases import confirm
from tests.unit.harness import START, FakeClock, Harness, Unscripted


def test_the_clock_stands_still_until_moved():
    clock = FakeClock()
    assert clock() == clock() == START
    assert clock.advance(1.5, minutes=1) == START + timedelta(seconds=61.5)
    assert clock.advance(timedelta(hours=1)) == START + timedelta(hours=1, seconds=61.5)


def test_the_dispatch_recorder_records_and_runs_nothing(harness: Harness):
    assert harness.svc.dispatch("tryons.run", "job-1", countdown=2.5) is True
    assert [(s.task, s.args, s.countdown) for s in harness.dispatch.of("tryons.run")] == [
        ("tryons.run", ("job-1",), 2.5)]
    harness.dispatch.broker_down = True
    assert harness.svc.dispatch("tryons.run", "job-2") is False
    taken = harness.dispatch.take()
    assert [s.args for s in taken] == [("job-1",)]  # a refused send is not recorded
    assert harness.dispatch.sent == [] and harness.dispatch.take() == []


def test_a_worker_task_is_run_only_when_asked(harness: Harness):
    issued, data = harness.issue()
    harness.put(issued, data)
    confirm(harness.svc, "alice", issued.upload.key)
    assert harness.upload(issued.upload.id).status == "validating"  # sent, not run
    assert harness.run_sent() == ["ready"]
    assert harness.dispatch.sent == []


def test_the_scripted_fal_answers_only_what_was_scripted(harness: Harness):
    fal = harness.fal
    with pytest.raises(Unscripted):
        fal.submit({}, None, start_timeout=10)
    with pytest.raises(Unscripted):
        fal.status("req-x")
    with pytest.raises(Unscripted):
        fal.result("req-x")
    first = fal.accept()
    failure = fal.refuse(FalFailure("fal.rate_limited", retriable=True, status=429))
    assert fal.submit({"a": 1}, "https://hook", start_timeout=5) == first
    with pytest.raises(FalFailure) as raised:
        fal.submit({}, None, start_timeout=5)
    assert raised.value is failure
    assert [s.outcome for s in fal.submissions] == [first, failure]
    fal.running(first)
    assert fal.status(first) == fal.status(first) == FalStatus(False)  # the last one repeats
    url = fal.finish(first)
    assert fal.status(first) == FalStatus(True)
    assert fal.result(first) == FalResult([url])
    fal.cancel(first)
    assert fal.canceled == [first]
    assert fal.status_checks == ["req-x", first, first, first]
