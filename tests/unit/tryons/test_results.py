"""A stored result: favorites re-tag it (shared/tryons/results.py), removal and
retention take it away, and the pieces that make it (render, download_result)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import httpx
import pytest

from shared.core.errors import AppError
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure
from shared.models import JobStatus
from shared.storage.base import StorageUnavailable
from shared.storage.keys import result_keys
from shared.tryons import results, submission
from shared.tryons import use_cases as tryons
from shared.tryons.completion import complete, poll
from shared.tryons.result_download import download_result
from shared.tryons.retention import delete_expired_results
from tests.conftest import fixture_bytes
from tests.unit.harness import Harness


def tags(harness: Harness, job) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    bucket = harness.svc.settings.processed_bucket
    return [harness.storage.tags(bucket, key) for key in (job.result_key, job.thumbnail_key)]


def ages(harness: Harness, job) -> list:  # type: ignore[no-untyped-def]
    return [harness.svc.result_store.head(key).last_modified
            for key in (job.result_key, job.thumbnail_key)]


def test_a_favorite_is_kept_and_unfavoriting_starts_retention_again(harness: Harness):
    job = harness.succeeded_job()
    written = ages(harness, job)
    harness.advance(days=3)
    kept = tryons.set_favorite(harness.svc, "alice", job.id, True)
    assert (kept.favorite, kept.delete_after, kept.result_tags) == (True, None, "kept")
    assert tags(harness, kept) == [{"retention": "kept"}] * 2
    assert ages(harness, kept) == written  # tagging does not rewrite
    assert harness.audit(job.id)[-1] == "tryon.favorited"
    assert tryons.set_favorite(harness.svc, "alice", job.id, True).favorite  # idempotent
    assert harness.audit(job.id).count("tryon.favorited") == 1
    harness.advance(days=10)
    back = tryons.set_favorite(harness.svc, "alice", job.id, False)
    days = harness.svc.settings.result_retention_days
    assert (back.favorite, back.result_tags) == (False, "temporary")
    assert back.delete_after == harness.clock().replace(microsecond=0) + timedelta(days=days)
    assert tags(harness, back) == [{"retention": "temporary"}] * 2
    # Copied onto themselves: the bucket's lifecycle counts their age from now.
    assert ages(harness, back) == [harness.clock()] * 2


def test_a_failed_job_cannot_be_a_favorite(harness: Harness):
    job = harness.start_job()
    harness.fal.refuse(FalFailure("fal.rejected", retriable=False, status=400))
    submission.run(harness.svc, job.id)
    with pytest.raises(AppError) as error:
        tryons.set_favorite(harness.svc, "alice", job.id, True)
    assert error.value.code == "tryon.no_result"
    with pytest.raises(AppError):
        tryons.set_favorite(harness.svc, "bob", job.id, True)


def test_tags_storage_could_not_take_are_repaired_by_the_beat(harness: Harness):
    job = harness.succeeded_job()
    harness.storage.down = True
    row = tryons.set_favorite(harness.svc, "alice", job.id, True)
    assert (row.favorite, row.delete_after, row.result_tags) == (True, None, None)  # the truth
    with pytest.raises(StorageUnavailable):  # still down: the next beat period tries again
        results.repair_tags(harness.svc)
    assert harness.job(job.id).result_tags is None
    harness.storage.down = False
    assert tags(harness, row) == [{"retention": "temporary"}] * 2
    assert results.repair_tags(harness.svc) == 1
    assert harness.job(job.id).result_tags == "kept"
    assert tags(harness, row) == [{"retention": "kept"}] * 2
    assert results.repair_tags(harness.svc) == 0


def test_a_job_favorited_while_it_runs_is_stored_kept(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    assert tryons.set_favorite(harness.svc, "alice", job.id, True).delete_after is None
    harness.fal.finish(request_id)
    poll(harness.svc, job.id, 1)
    row = harness.job(job.id)
    assert (row.status, row.delete_after, row.result_tags) == (JobStatus.SUCCEEDED, None, "kept")
    assert tags(harness, row) == [{"retention": "kept"}] * 2


def test_removal_takes_the_objects_and_the_row(harness: Harness):
    job = harness.succeeded_job()
    other = harness.succeeded_job("bob")
    with pytest.raises(AppError) as error:
        tryons.remove(harness.svc, "bob", job.id)
    assert error.value.code == "tryon.not_found"
    tryons.remove(harness.svc, "alice", job.id)
    assert harness.job(job.id) is None
    assert harness.objects(harness.svc.settings.processed_bucket) == set(
        result_keys("bob", other.id))
    assert harness.audit(job.id)[-1] == "tryon.deleted"
    assert harness.fal.canceled == []  # it was done: nothing to cancel


def test_removing_a_job_in_flight_cancels_its_request(harness: Harness):
    job, request_id, _ = harness.submitted_job()
    tryons.remove(harness.svc, "alice", job.id)
    assert harness.fal.canceled == [request_id]
    # fal's late completion finds nothing to finish.
    harness.fal.finish(request_id)
    assert complete(harness.svc, job.id, 1, Completion(True, request_id)) == []
    assert harness.objects(harness.svc.settings.processed_bucket) == set()


def test_results_past_their_deadline_go_and_favorites_stay(harness: Harness):
    plain = harness.succeeded_job()
    favorite = harness.succeeded_job("alice")
    tryons.set_favorite(harness.svc, "alice", favorite.id, True)
    harness.advance(days=harness.svc.settings.result_retention_days)
    assert delete_expired_results(harness.svc) == 0  # the deadline itself is not past
    harness.advance(1)
    assert delete_expired_results(harness.svc) == 1
    assert harness.job(plain.id) is None
    assert harness.job(favorite.id) is not None
    assert harness.objects(harness.svc.settings.processed_bucket) == set(
        result_keys("alice", favorite.id))


def test_render_re_encodes_and_refuses_what_is_not_an_image():
    rendered = results.render(fixture_bytes("coffee.jpg"), 40_000_000)
    assert rendered.result.data[:2] == b"\xff\xd8"
    assert max(rendered.thumbnail.width, rendered.thumbnail.height) == 256
    for bad in (b"", b"GIF89a not really", fixture_bytes("coffee.jpg")[:3000]):
        with pytest.raises(results.NotAnImage):
            results.render(bad, 40_000_000)
    with pytest.raises(results.NotAnImage, match="too many pixels"):
        results.render(fixture_bytes("coffee.jpg"), 1000)


URL = "https://v3.fal.media/files/result.jpg"


def failure_of(harness: Harness, url: str = URL) -> FalFailure:
    with pytest.raises(FalFailure) as error:
        download_result(harness.svc, url)
    return error.value


def test_download_result_is_bounded_and_follows_no_redirect(harness: Harness):
    data = fixture_bytes("chelsea.jpg")
    harness.media.serve(URL, data)
    assert download_result(harness.svc, URL) == data
    for url in ("http://v3.fal.media/files/result.jpg", "https://fal.media@evil.example/x.jpg",
                "https://169.254.169.254/latest", "https://fal.media.evil.example/x.jpg"):
        assert failure_of(harness, url).error_type == "host not allowed"
    assert harness.media.requests == [URL]  # none of those was even asked
    harness.svc.settings = replace(harness.svc.settings, result_max_bytes=len(data) - 1)
    too_large = failure_of(harness)
    assert (too_large.error_type, too_large.retriable) == ("too large", False)
    harness.media.serve(URL, b"", status=302, headers={"Location": "https://evil.example/"})
    assert (failure_of(harness).status, failure_of(harness).retriable) == (302, False)
    harness.media.serve(URL, b"", status=502)
    assert failure_of(harness).retriable
    harness.media.break_with(URL, httpx.ReadTimeout)
    broken = failure_of(harness)
    assert (broken.code, broken.retriable, broken.error_type) == (
        "fal.bad_result", True, "ReadTimeout")
