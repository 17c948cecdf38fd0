"""Finishing a try-on (shared/tryons/completion.py): what fal reported becomes a
stored result, a retry or a failure. Results come through the real
download_result from fal's scripted CDN (harness.FalMedia)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from datetime import timedelta

import httpx
from PIL import Image

from shared.core.task_names import POLL_TRYON, RUN_TRYON
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure
from shared.models import JobStatus
from shared.storage.keys import result_keys
from shared.tryons import completion
from shared.tryons.use_cases import result_links
from tests.conftest import fixture_bytes
from tests.unit.harness import START, Harness


def stored(harness: Harness, key: str) -> bytes:
    return harness.svc.result_store.get_bytes(key, max_bytes=50_000_000)


def test_a_finished_request_becomes_a_stored_result(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.advance(3)
    harness.fal.running(request_id)
    [again] = completion.poll(harness.svc, job.id, 1)
    assert (again.task, again.args) == (POLL_TRYON, (job.id, 1))
    assert harness.job(job.id).status == JobStatus.PROCESSING
    url = harness.fal.finish(request_id)
    assert completion.poll(harness.svc, job.id, 1) == []
    row = harness.job(job.id)
    result_key, thumb_key = result_keys("alice", job.id)
    s = harness.svc.settings
    assert (row.status, row.result_key, row.thumbnail_key, row.result_tags) == (
        JobStatus.SUCCEEDED, result_key, thumb_key, "temporary")
    assert row.completed_at == START + timedelta(seconds=3) and row.due_at is None
    assert row.delete_after == (START + timedelta(seconds=3, days=s.result_retention_days))
    assert harness.media.requests == [url]
    result = stored(harness, result_key)
    assert row.result_sha256 == hashlib.sha256(result).hexdigest()
    with Image.open(io.BytesIO(result)) as image, Image.open(
            io.BytesIO(fixture_bytes("chelsea.jpg"))) as original:
        assert image.format == "JPEG" and image.size == original.size
        assert (row.result_width, row.result_height) == image.size
    with Image.open(io.BytesIO(stored(harness, thumb_key))) as thumb:
        assert max(thumb.size) == 256
    for key in (result_key, thumb_key):
        assert harness.storage.tags(s.processed_bucket, key) == {"retention": "temporary"}
    assert harness.audit(job.id)[-1] == "tryon.succeeded"
    # Fresh signed links, read by the API.
    links = result_links(harness.svc, row)
    assert links is not None and links.result_url.startswith(
        f"memory://{s.processed_bucket}/{result_key}?")
    assert links.expires_at == harness.clock() + timedelta(seconds=s.result_url_ttl_seconds)


def test_a_webhook_carries_ids_only_and_the_result_is_fetched_by_id(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.fal.finish(request_id)
    assert completion.complete(harness.svc, job.id, 1, Completion(True, request_id)) == []
    assert harness.fal.result_reads == [request_id]
    assert harness.job(job.id).status == JobStatus.SUCCEEDED
    # A duplicate delivery finds the job done and writes nothing.
    before = dict(harness.storage.buckets[harness.svc.settings.processed_bucket])
    harness.advance(60)
    assert completion.complete(harness.svc, job.id, 1, Completion(True, request_id)) == []
    assert harness.storage.buckets[harness.svc.settings.processed_bucket] == before
    assert harness.audit(job.id).count("tryon.succeeded") == 1


def test_a_completion_for_another_request_or_a_later_attempt_is_ignored(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    assert completion.complete(harness.svc, job.id, 1, Completion(True, "someone-else")) == []
    assert completion.complete(harness.svc, job.id, 2, Completion(True, request_id)) == []
    assert completion.complete(harness.svc, "00000000-0000-4000-8000-000000000000", 1,
                               Completion(True, request_id)) == []
    assert harness.job(job.id).status == JobStatus.PROCESSING
    assert harness.fal.result_reads == [] and harness.media.requests == []


def test_a_model_error_fails_the_job_with_its_code(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    assert completion.complete(harness.svc, job.id, 1, Completion(
        False, request_id, error_type="content_policy_violation")) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code) == (JobStatus.FAILED, "fal.content_policy")


def test_a_transient_error_is_retried_with_a_new_submission(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    [retry] = completion.complete(harness.svc, job.id, 1, Completion(
        False, request_id, error_type="runner_disconnected"))
    assert retry.task == RUN_TRYON
    row = harness.job(job.id)
    assert (row.status, row.fal_request_id, row.fal_failures) == (JobStatus.QUEUED, None, 1)


def test_a_poll_that_finds_an_error_asks_the_result_for_its_type(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.fal.fail_request(request_id, "image_load_error")
    assert completion.poll(harness.svc, job.id, 1) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code) == (JobStatus.FAILED, "fal.rejected")
    assert harness.fal.result_reads == [request_id]


def test_a_status_check_that_fails_in_transit_is_made_again(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.fal.status_fails(request_id, FalFailure("fal.unavailable", retriable=True))
    [again] = completion.poll(harness.svc, job.id, 1)
    assert again.task == POLL_TRYON
    assert completion.poll(harness.svc, job.id, 1, reschedule=False) == []  # the reconciler's
    assert harness.job(job.id).status == JobStatus.PROCESSING
    assert completion.poll(harness.svc, job.id, 2) == []  # not the current attempt


def test_what_fal_returned_must_be_an_image(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.fal.finish(request_id, image=b"<html>not an image</html>")
    assert completion.poll(harness.svc, job.id, 1) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code) == (JobStatus.FAILED, "fal.bad_result")
    assert harness.objects(harness.svc.settings.processed_bucket) == set()


def test_a_result_from_a_host_outside_the_allow_list_is_not_fetched(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    harness.fal.finish(request_id, url="https://fal.media.evil.example/x.jpg")
    assert completion.poll(harness.svc, job.id, 1) == []
    assert harness.job(job.id).error_code == "fal.bad_result"
    assert harness.media.requests == []


def test_a_result_the_cdn_fails_to_serve_is_asked_for_again(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    url = harness.fal.finish(request_id)
    harness.media.serve(url, b"", status=503)
    [again] = completion.poll(harness.svc, job.id, 1)
    # The result is there; fetch it again later, do not submit again.
    assert (again.task, again.args) == (POLL_TRYON, (job.id, 1, False))
    assert harness.job(job.id).status == JobStatus.PROCESSING
    harness.media.break_with(url, httpx.ConnectError)
    assert [f.task for f in completion.poll(harness.svc, job.id, 1)] == [POLL_TRYON]
    harness.media.serve(url, fixture_bytes("coffee.jpg"))
    assert completion.poll(harness.svc, job.id, 1, reschedule=False) == []
    assert harness.job(job.id).status == JobStatus.SUCCEEDED


def test_the_selfie_can_go_as_soon_as_its_job_is_done(harness: Harness):
    harness.svc.settings = replace(harness.svc.settings, delete_selfie_after_job=True)
    upload = harness.ready_upload()
    harness.advance(10)
    harness.succeeded_job(upload=upload)
    assert harness.upload(upload.id).delete_after == harness.clock()
