"""The fault suite's own judgement, on made-up emulator records: a check that
cannot fail would prove nothing (tests/faults/test_nothing_lost.py)."""

from __future__ import annotations

from typing import Any

from tests.faults.test_nothing_lost import double_submissions, fal_requests_by_job


def request(job: str, attempt: int, at: float, *, status: str = "COMPLETED",
            error_type: str | None = None, fault: str | None = None) -> dict[str, Any]:
    return {"webhook_url": f"http://api/v1/webhooks/fal?job={job}&attempt={attempt}&token=t",
            "submitted_at": at, "status": status, "error_type": error_type, "fault": fault}


def judge(*requests: dict[str, Any]) -> dict[str, int]:
    stats = {"requests": {str(n): r for n, r in enumerate(requests)}}
    return double_submissions(fal_requests_by_job(stats))


def test_a_retry_after_fal_failed_is_not_a_double():
    assert judge(request("a", 1, 1.0, error_type="internal_error"), request("a", 2, 2.0)) == {}


def test_a_second_submission_while_the_first_could_finish_is_one():
    # finished by itself, or still running, or canceled by us: each could have done it
    for first in (request("a", 1, 1.0), request("a", 1, 1.0, status="IN_PROGRESS"),
                  request("a", 1, 1.0, error_type="request_cancelled")):
        assert judge(request("a", 2, 2.0), first) == {"a": 1}  # order of submission counts


def test_a_hung_request_could_never_finish_and_one_job_is_not_another():
    assert judge(request("a", 1, 1.0, status="IN_PROGRESS", fault="never_complete"),
                 request("a", 2, 2.0), request("b", 1, 1.5)) == {}
