"""The metrics operations alert on (issue 16): fal failures by our closed code, the
job-duration histogram by outcome, and what the beat's passes did. Each moves by
exactly what happened, read from the registry the scrape endpoint serves."""

from __future__ import annotations

from prometheus_client import REGISTRY

import worker.tasks  # noqa: F401 - registers the tasks
from shared.core import task_names as names
from shared.fal.gateway import FalFailure
from shared.models import JobStatus
from shared.tryons import use_cases as tryons
from tests.unit.harness import Harness


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def start(harness: Harness) -> str:
    upload = harness.ready_upload()
    return tryons.start(harness.svc, "alice", upload_id=upload.id, key=None,
                        hairstyle_id="bob", prompt=None, locale="en").id


def test_a_refused_submission_then_a_success(harness: Harness):
    before = (sample("fal_request_failure_total", code="fal.unavailable"),
              sample("tryon_job_duration_seconds_count", outcome="succeeded"),
              sample("tryon_job_duration_seconds_sum", outcome="succeeded"))
    job_id = start(harness)
    harness.fal.refuse(FalFailure("fal.unavailable", retriable=True, status=503))
    harness.run_sent(names.RUN_TRYON)
    [retry] = harness.dispatch.of(names.RUN_TRYON)
    harness.advance(retry.countdown)
    request_id = harness.fal.accept()
    harness.run_sent(names.RUN_TRYON)
    harness.advance(7)
    harness.fal.finish(request_id)
    harness.run_sent(names.POLL_TRYON)
    assert harness.job(job_id).status == JobStatus.SUCCEEDED
    assert sample("fal_request_failure_total", code="fal.unavailable") == before[0] + 1
    assert sample("tryon_job_duration_seconds_count", outcome="succeeded") == before[1] + 1
    waited = sample("tryon_job_duration_seconds_sum", outcome="succeeded") - before[2]
    assert abs(waited - (retry.countdown + 7)) < 0.01  # acceptance to the end, on the clock


def test_a_job_that_fails_for_good(harness: Harness):
    before = (sample("fal_request_failure_total", code="fal.content_policy"),
              sample("tryon_job_duration_seconds_count", outcome="failed"))
    job_id = start(harness)
    harness.fal.refuse(FalFailure("fal.content_policy", retriable=False, status=422))
    harness.run_sent(names.RUN_TRYON)
    assert harness.job(job_id).status == JobStatus.FAILED
    assert sample("fal_request_failure_total", code="fal.content_policy") == before[0] + 1
    assert sample("tryon_job_duration_seconds_count", outcome="failed") == before[1] + 1


def test_the_beat_s_passes_count_what_they_did(harness: Harness):
    job, _, _ = harness.submitted_job()
    harness.advance(20)
    reconciled = sample("reconciler_actions_total", pass_name="reconcile_tryons")
    assert harness.run_task(names.RECONCILE_TRYONS) == 1
    assert sample("reconciler_actions_total", pass_name="reconcile_tryons") == reconciled + 1
    harness.svc.upload_store.put_bytes("sanitized/alice/00000000-0000-4000-8000-000000000000.jpg",
                                       b"x", content_type="image/jpeg")
    removed = sample("retention_deletions_total", pass_name="remove_orphans")
    harness.advance(hours=1)
    assert harness.run_task(names.REMOVE_ORPHANS) == 1
    assert sample("retention_deletions_total", pass_name="remove_orphans") == removed + 1
    idle = sample("retention_deletions_total", pass_name="upload_retention")
    assert harness.run_task(names.UPLOAD_RETENTION) == 0
    assert sample("retention_deletions_total", pass_name="upload_retention") == idle
    assert job.id  # the job the reconciler looked at
