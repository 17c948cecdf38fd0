"""Catalogue changes while jobs are queued (issue 15, finding 5): a job runs with the
prompt it was accepted with, whatever the catalogue of the worker that runs it says;
only `hairfluencer retire-hairstyle` fails queued jobs on purpose; and no job stays
in flight past its bounds, so its selfie goes at its deadline."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from api import cli
from shared.core.errors import ERROR_KINDS
from shared.core.i18n import MESSAGES
from shared.core.task_names import RUN_TRYON
from shared.fal.completions import Completion
from shared.fal.gateway import FalFailure
from shared.models import JobStatus, TryOn, UploadStatus
from shared.tryons import completion, hairstyles, submission
from shared.tryons.hairstyles import RETIRED, Hairstyle, catalogue, compose_prompt
from shared.tryons.reconcile import QUEUED_GRACE, reconcile
from shared.tryons.retirement import StillInCatalogue, retire_hairstyle
from shared.uploads import retention
from tests.unit.harness import Harness

Swap = Callable[..., None]


@pytest.fixture
def swap_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Swap]:
    """Replace the catalogue this process reads (as a deploy would): `without` drops
    styles, `prompts` rewrites templates, `extra` adds styles."""
    original = dict(catalogue())

    def swap(*, without: tuple[str, ...] = (), prompts: dict[str, str] | None = None,
             extra: tuple[Hairstyle, ...] = ()) -> None:
        styles = [replace(s, prompt=(prompts or {}).get(s.id, s.prompt))
                  for s in original.values() if s.id not in without] + list(extra)
        path = tmp_path / f"hairstyles-{len(list(tmp_path.glob('hairstyles-*')))}.json"
        path.write_text(json.dumps({"styles": [
            {"id": s.id, "names": s.names, "prompt": s.prompt} for s in styles]}))
        monkeypatch.setattr(hairstyles, "CATALOGUE", path)
        hairstyles.catalogue.cache_clear()

    yield swap
    hairstyles.catalogue.cache_clear()  # the real file again once monkeypatch undoes


def finish(harness: Harness, job_id: str) -> TryOn:
    """fal accepts the next submission and reports it done (its webhook); the job's
    result is stored."""
    request_id = harness.fal.accept()
    submission.run(harness.svc, job_id)
    url = harness.fal.finish(request_id)
    row = harness.job(job_id)
    assert row is not None and row.fal_request_id == request_id, row
    assert completion.complete(harness.svc, job_id, row.attempt, Completion(
        True, request_id, image_urls=(url,))) == []
    row = harness.job(job_id)
    assert row is not None
    return row


def sent_prompt(harness: Harness) -> Any:
    return harness.fal.submissions[-1].arguments["prompt"]


# --- a job keeps the prompt it was accepted with ----------------------------

def test_the_composed_prompt_is_stored_when_the_job_is_accepted(harness: Harness):
    job = harness.start_job(prompt="with\x07 bangs")
    assert harness.job(job.id).composed_prompt == compose_prompt(catalogue()["bob"],
                                                                 "with\x07 bangs")


def test_a_style_removed_while_its_job_is_queued_still_runs_it(
        harness: Harness, swap_catalogue: Swap):
    job = harness.start_job(prompt="a little shorter")
    accepted = compose_prompt(catalogue()["bob"], "a little shorter")
    swap_catalogue(without=("bob",))
    row = finish(harness, job.id)
    assert (row.status, row.error_code) == (JobStatus.SUCCEEDED, None)
    assert sent_prompt(harness) == accepted


def test_a_renamed_prompt_leaves_an_accepted_job_as_it_was(harness: Harness,
                                                           swap_catalogue: Swap):
    before = harness.start_job()
    old = catalogue()["bob"].prompt
    swap_catalogue(prompts={"bob": "Give the person a blunt bob with a fringe."})
    after = harness.start_job()
    assert finish(harness, before.id).status == JobStatus.SUCCEEDED
    assert sent_prompt(harness) == old
    assert finish(harness, after.id).status == JobStatus.SUCCEEDED
    assert sent_prompt(harness) == "Give the person a blunt bob with a fringe."


def test_a_rolling_deploy_runs_a_new_style_on_a_worker_that_lacks_it(
        harness: Harness, swap_catalogue: Swap):
    mullet = Hairstyle("mullet", {"en": "Mullet"}, "Give the person a mullet.")
    swap_catalogue(extra=(mullet,))  # the new API's catalogue
    job = harness.start_job(hairstyle="mullet")
    swap_catalogue()  # the old worker's
    # The real task, as the worker runs it: no exception, the job is submitted.
    harness.fal.accept()
    harness.run_task(RUN_TRYON, job.id)
    assert harness.job(job.id).status == JobStatus.PROCESSING
    assert sent_prompt(harness) == "Give the person a mullet."


# --- jobs accepted before prompts were stored --------------------------------

def forget_prompt(harness: Harness, job_id: str) -> None:
    """As a job accepted before migration 0005 reads: no stored prompt."""
    with harness.svc.sessions.begin() as session:
        session.execute(update(TryOn).where(TryOn.id == job_id).values(composed_prompt=None))


def test_an_old_job_runs_with_the_catalogues_prompt(harness: Harness):
    job = harness.start_job(prompt="curtain bangs")
    forget_prompt(harness, job.id)
    assert finish(harness, job.id).status == JobStatus.SUCCEEDED
    assert sent_prompt(harness) == compose_prompt(catalogue()["bob"], "curtain bangs")


def test_an_old_job_whose_style_is_gone_fails_at_once_instead_of_stranding(
        harness: Harness, swap_catalogue: Swap):
    job = harness.start_job()
    forget_prompt(harness, job.id)
    swap_catalogue(without=("bob",))
    assert harness.run_task(RUN_TRYON, job.id) == 0  # no exception, nothing sent again
    row = harness.job(job.id)
    assert (row.status, row.error_code, row.due_at) == (JobStatus.FAILED, RETIRED, None)
    assert not harness.fal.submissions
    assert harness.audit(job.id)[-1] == "tryon.failed"
    assert reconcile(harness.svc) == []  # nothing left to re-send


# --- retiring a style now -----------------------------------------------------

def test_retiring_a_style_fails_its_queued_jobs_and_only_those(harness: Harness,
                                                               swap_catalogue: Swap):
    queued = harness.start_job()
    backing_off = harness.start_job()
    harness.fal.refuse(FalFailure("fal.unavailable", retriable=True, status=503))
    submission.run(harness.svc, backing_off.id)  # back in the queue, with backoff
    at_fal, _, _ = harness.submitted_job()
    other = harness.start_job(hairstyle="pixie-cut")
    with pytest.raises(StillInCatalogue):
        retire_hairstyle(harness.svc, "bob")  # new jobs could still be accepted
    assert harness.job(queued.id).status == JobStatus.QUEUED
    swap_catalogue(without=("bob",))
    assert retire_hairstyle(harness.svc, "bob") == 2
    for job in (queued, backing_off):
        row = harness.job(job.id)
        assert (row.status, row.error_code) == (JobStatus.FAILED, RETIRED)
    assert harness.job(at_fal.id).status == JobStatus.PROCESSING  # accepted: it may be paid
    assert harness.job(other.id).status == JobStatus.QUEUED
    assert retire_hairstyle(harness.svc, "bob") == 0  # again: nothing more to do
    submissions = len(harness.fal.submissions)
    assert submission.run(harness.svc, queued.id) == []  # its message, delivered late
    assert len(harness.fal.submissions) == submissions


def test_the_retire_command_reports_what_it_failed(harness: Harness, swap_catalogue: Swap,
                                                   monkeypatch: pytest.MonkeyPatch):
    job = harness.start_job()
    monkeypatch.setattr(cli, "get_settings", lambda: harness.svc.settings)
    monkeypatch.setattr(cli.Services, "from_settings", classmethod(lambda _cls, _s: harness.svc))
    runner = CliRunner()
    refused = runner.invoke(cli.main, ["retire-hairstyle", "bob"])
    assert refused.exit_code == 1 and "still in this catalogue" in refused.output
    swap_catalogue(without=("bob",))
    done = runner.invoke(cli.main, ["retire-hairstyle", "bob"])
    assert done.exit_code == 0, done.output
    assert done.output == "bob: 1 queued try-ons failed with tryon.hairstyle_retired\n"
    assert harness.job(job.id).error_code == RETIRED


def test_the_retired_code_is_stable_and_localized():
    assert ERROR_KINDS[RETIRED].retriable is False
    assert set(MESSAGES[RETIRED]) == {"en", "es"}


# --- no job stays in flight past its bounds -----------------------------------

def test_a_job_whose_run_keeps_raising_ends_and_its_selfie_goes_at_its_deadline(
        harness: Harness, monkeypatch: pytest.MonkeyPatch):
    upload = harness.ready_upload()
    job = harness.start_job(upload=upload)

    def broken(bucket: str, key: str, *, expires_in: int) -> str:
        raise RuntimeError("a bug before the claim")

    monkeypatch.setattr(harness.storage, "presign_get", broken)
    bound = submission.submit_bound(harness.svc.settings)
    resent = 0
    while harness.clock() < job.created_at + bound:
        with pytest.raises(RuntimeError):
            submission.run(harness.svc, job.id)
        assert harness.job(job.id).status == JobStatus.QUEUED  # it never got to its claim
        resent += len(reconcile(harness.svc))
        harness.advance(QUEUED_GRACE * 6)
    assert resent > 0
    assert reconcile(harness.svc) == []
    row = harness.job(job.id)
    assert (row.status, row.error_code) == (JobStatus.FAILED, "fal.timeout")
    assert not harness.fal.submissions
    # The selfie is no longer held by a job in flight: it goes at its deadline.
    harness.advance(hours=harness.svc.settings.upload_retention_hours)
    assert retention.delete_past_retention(harness.svc) == 1
    assert harness.upload(upload.id).status == UploadStatus.DELETED


def test_a_run_past_the_bound_fails_the_job_instead_of_submitting(harness: Harness):
    job = harness.start_job()
    harness.advance(submission.submit_bound(harness.svc.settings))
    assert submission.run(harness.svc, job.id) == []
    assert harness.job(job.id).error_code == "fal.timeout"
    assert not harness.fal.submissions


def test_the_bound_leaves_room_for_every_legitimate_wait(harness: Harness):
    s = harness.svc.settings
    bound = submission.submit_bound(s).total_seconds()
    longest_backoffs = sum(2 ** n * s.fal_retry_base_seconds * 1.25
                           for n in range(1, s.fal_max_retries + 1))
    assert bound >= (s.upload_wait_seconds + submission.MAX_ATTEMPTS * s.fal_in_doubt_seconds
                     + longest_backoffs)
    # …and it is far shorter than a selfie is kept.
    assert bound < s.upload_retention_hours * 3600 / 10
