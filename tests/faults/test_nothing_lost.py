"""The fault suite: 200 try-ons in flight, uploads validating and an erasure
running, on the real processes (tests/faults/system.py), while the suite kills
workers at chosen moments, restarts Redis, cuts every database connection, makes
S3 throttle, and makes fal fail, time out and send its webhooks twice, late and
out of order. Afterwards, within one reconciler pass, nothing may be lost or done
twice. It prints a table of what it did and saw (also written to
.devstack/faults/report.md) and fails on any lost job or duplicated effect.

Run: bash devstack/test -m faults tests/faults   (about 5 minutes)
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from devstack.procs import wait_until
from shared.models import AuditEvent, ErasureRequest, TryOn, Upload
from shared.privacy.erasure import user_locations
from shared.services import Services
from tests.conftest import fixture_bytes
from tests.faults.app_client import AppClient
from tests.faults.system import System

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / ".devstack" / "faults" / "report.md"
SELFIE = fixture_bytes("astronaut.jpg")
USERS = [f"user{n:02d}" for n in range(20)]
JOBS_PER_USER = 10  # 200 in all
ERASED = "leaving-user"
SETTLE_TIMEOUT = 300.0
# What fal answers, permanently, for these job faults (the rest are transient).
PERMANENT_JOB_FAULTS = {"content_policy": "fal.content_policy", "no_media": "fal.no_result",
                        "never_complete": "fal.timeout"}
# Audit events that describe one effect each: any of them twice is a duplicated effect.
ONCE_PER_SUBJECT = ("upload.issued", "upload.confirmed", "upload.validated", "upload.rejected",
                    "tryon.created", "tryon.succeeded", "tryon.failed", "user.erased")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = System(tmp_path_factory.mktemp("faults")).start()
    try:
        yield running
    finally:
        running.stop()


@dataclass
class Run:
    system: System
    client: AppClient
    faults: list[tuple[str, str]] = field(default_factory=list)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> user
    uploads: dict[str, str] = field(default_factory=dict)  # upload id -> user
    hit: list[tuple[str, str]] = field(default_factory=list)  # (job or upload id, the kill)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, name: str, detail: str = "") -> None:
        self.faults.append((name, detail))
        print(f"[{time.strftime('%H:%M:%S')}] fault: {name} {detail}", flush=True)

    def record_hits(self, tasks: list[dict[str, Any]], label: str) -> None:
        for task in tasks:
            if task["name"].startswith(("tryons.", "uploads.")):
                self.hit.append((task["args"][0], label))

    def kill(self, task_name: str, label: str, name: str, timeout: float = 30) -> None:
        """Kill what runs `task_name` (tests/faults/system.py, kill_running): every
        task that died with it counts as hit."""
        died = self.system.kill_running(task_name, timeout)
        self.record_hits(died, label)
        self.fault(name, f"pids {sorted({t['worker_pid'] for t in died})}, "
                         f"{len(died)} task(s) running")

    def upload(self, user: str) -> str:
        upload_id = self.client.upload(user, SELFIE)
        with self.lock:
            self.uploads[upload_id] = user
        return upload_id

    def try_on(self, user: str, upload_id: str, n: int) -> None:
        job_id = self.client.start_try_on(user, upload_id, key=f"{user}-{upload_id}-{n}")
        with self.lock:
            self.jobs[job_id] = user

    def in_parallel(self, calls: list[Callable[[], Any]], workers: int = 12) -> list[Any]:
        with ThreadPoolExecutor(workers) as pool:
            return [f.result() for f in [pool.submit(call) for call in calls]]


# The settle wait alone may take SETTLE_TIMEOUT: room for it and the load before.
@pytest.mark.timeout(SETTLE_TIMEOUT + 300)
def test_nothing_is_lost(system: System) -> None:
    settings = system.settings()
    run = Run(system, AppClient(system.api_url, settings))
    svc = Services.from_settings(settings)
    started = time.monotonic()

    # --- the load: a selfie each, ready; the leaving user with work of their own ------
    first = dict(zip(USERS + [ERASED], run.in_parallel(
        [lambda u=u: run.upload(u) for u in USERS + [ERASED]]), strict=True))
    assert wait_until(lambda: _count(svc, Upload, Upload.status == "validating") == 0, 60)

    # fal misbehaves all along: faults are taken one per submit / accepted request.
    system.fal.configure(
        submit_faults=["429", "500_internal", "503_runner", "504_startup", "retryable_header",
                       "502_nginx", "drop", "drop_after_enqueue", "429", "503_runner"],
        job_faults=["error_internal", "content_policy", "never_complete", "no_media",
                    "error_internal", "error_internal"],
        webhook_mode="duplicate", webhook_duplicate_seconds=12)
    run.fault("fal submit faults", "429 ×2, 500, 503 ×2, 504 startup, retryable, 502 ingress, "
              "connection dropped before and after enqueue")
    run.fault("fal job faults", "internal error ×3 (retried), content policy, never completes "
              "(deadline), no media")
    run.fault("webhooks duplicated", "every delivery sent again 12 s later: after the job "
              "finished, after later attempts (late, out of order)")

    # --- second selfies: their validation is slowed, and one validator is killed -----
    system.proxy.delay("/uploads/", 4)
    second: dict[str, str] = {}

    def second_upload(user: str) -> None:
        second[user] = run.upload(user)

    uploading = threading.Thread(target=lambda: run.in_parallel(
        [lambda u=u: second_upload(u) for u in USERS], workers=6))
    uploading.start()
    run.kill("uploads.validate", "validation", "SIGKILL prefork child in uploads.validate")
    uploading.join()
    system.proxy.delay("/uploads/", 0)

    # --- wave 1: 100 try-ons, half waiting for their selfie's validation --------------
    system.fal.configure(submit_delay_seconds=3)  # fal accepted, its answer not yet back
    wave = [lambda u=u, n=n: run.try_on(u, first[u] if n % 2 else second[u], n)
            for u in USERS for n in range(JOBS_PER_USER // 2)]
    posting = threading.Thread(target=lambda: run.in_parallel(wave))
    posting.start()
    run.kill("tryons.run", "claim-to-submit", "SIGKILL the fal pool's process (threads) in "
             "tryons.run, between claim and submit response; restarted 5 s later")
    system.fal.configure(submit_delay_seconds=0)
    posting.join()

    # the leaving user's own work (erased later, while faults go on)
    leaving = [run.client.start_try_on(ERASED, first[ERASED], f"{ERASED}-{n}") for n in range(3)]
    run.upload(ERASED)
    # the app polls its jobs all along, as it would
    poller = Poller(run)
    poller.start()

    # --- finalize: result downloads slowed, one finalizer killed ----------------------
    system.fal.configure(media_delay_seconds=3)
    run.kill("tryons.complete", "finalize", "SIGKILL the fal pool's process in tryons.complete "
             "(downloading/storing the result); restarted 5 s later", timeout=60)
    system.fal.configure(media_delay_seconds=0)

    # --- a whole worker process dies with its children and held messages --------------
    running = system.kill_worker_whole("validation1")
    run.record_hits(running, "whole worker")
    run.fault("SIGKILL a whole validation worker (parent and prefork children)",
              f"running {[t['name'] for t in running]}; restarted 5 s later")
    time.sleep(5)
    system.restart_worker("validation1")

    # --- wave 2: 100 more and uploads validating, while the erasure runs, S3
    # throttles, Redis goes and the database cuts every connection ---------------------
    system.fal.configure(webhook_mode="late", webhook_late_seconds=6)
    run.fault("webhooks late", "6 s after completion, for wave 2")
    wave = [lambda u=u, n=n: run.try_on(u, first[u] if n % 2 else second[u], n)
            for u in USERS for n in range(JOBS_PER_USER // 2, JOBS_PER_USER)]
    validating: list[str] = []
    posting = threading.Thread(target=lambda: (run.in_parallel(wave), validating.extend(
        run.in_parallel([lambda u=u: run.upload(u) for u in USERS[:6]]))))
    posting.start()
    time.sleep(1)
    erasure = run.client.call("DELETE", "/v1/me", ERASED).json()
    run.fault("erasure requested", f"{ERASED}: 2 selfies, 3 try-ons in flight")
    system.proxy.slow_down(6)
    run.fault("S3 503 SlowDown", "every request for 6 s (the erasure's deletes, results, "
              "validations, fal fetching selfies)")
    time.sleep(2)
    system.restart_redis()
    run.fault("Redis restart", "SIGKILL, 2 s down, back empty: queues, unacknowledged and "
              "scheduled messages, idempotency records, rate counters all lost")
    time.sleep(2)
    run.fault("pg_terminate_backend on every connection", f"{system.terminate_db_connections()} "
              "connections")
    posting.join()
    time.sleep(8)
    system.fal.configure(webhook_mode="normal")
    last_fault = time.monotonic()

    # --- afterwards -------------------------------------------------------------------
    def settled() -> bool:
        return (_count(svc, TryOn, TryOn.status.in_(("queued", "processing"))) == 0
                and _count(svc, Upload, Upload.status.in_(("pending", "validating"))) == 0
                and _erasure_status(svc) == "done")

    assert wait_until(settled, SETTLE_TIMEOUT, interval=1), _stuck(svc)
    settle_seconds = time.monotonic() - last_fault
    poller.stop()
    # "within one reconciler pass": one more pass, and nothing may have changed back
    time.sleep(float(settings.reconcile_interval_seconds) + 1)
    assert settled()

    report = _check(run, svc, settings, erasure["erasureId"], leaving, validating,
                    settle_seconds, time.monotonic() - started, poller)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(report.table + "\n")
    print("\n" + report.table)
    assert not report.problems, "\n".join(report.problems)


class Poller(threading.Thread):
    """The app polling its jobs (with If-None-Match, as the API invites) and the
    leaving user's erasure. Every answer must be a success, a 304, a 404 for what
    was erased, or a retriable error in the envelope: never a bare 500."""

    def __init__(self, run: Run) -> None:
        super().__init__(daemon=True, name="app-poller")
        self.load, self.answers, self.bad = run, Counter[str](), list[str]()
        self.etags: dict[str, str] = {}
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        import httpx

        client = self.load.client
        while not self._halt.wait(0.05):
            jobs = list(self.load.jobs.items())
            if not jobs:
                continue
            job_id, user = random.choice(jobs)
            extra = {"If-None-Match": self.etags[job_id]} if job_id in self.etags else {}
            try:
                response = client.http.get(f"/v1/try-ons/{job_id}", headers=client.headers(
                    user, **extra))
                erasure = client.http.get("/v1/me/erasure", headers=client.headers(ERASED))
            except httpx.TransportError as exc:
                self.answers[type(exc).__name__] += 1
                continue
            for answer in (response, erasure):
                self._judge(answer)
            if response.status_code == 200:
                self.etags[job_id] = response.headers.get("ETag", "")

    def _judge(self, response: Any) -> None:
        status = response.status_code
        if status in (200, 304, 404):
            self.answers[str(status)] += 1
            return
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            self.bad.append(f"{status} without the error envelope")
            return
        self.answers[f"{status} {error['code']}"] += 1
        if not error["retriable"] or status == 500:
            self.bad.append(f"{status} {error['code']}")


# --- the checks -----------------------------------------------------------------------

@dataclass
class Report:
    table: str
    problems: list[str]


def _check(run: Run, svc: Services, settings: Any, erasure_id: str, leaving: list[str],
           validating: list[str], settle_seconds: float, total_seconds: float,
           poller: Poller) -> Report:
    problems: list[str] = [f"the app was answered {answer}" for answer in poller.bad]
    system = run.system
    with svc.sessions() as session:
        jobs = {j.id: j for j in session.scalars(select(TryOn))}
        uploads = {u.id: u for u in session.scalars(select(Upload))}
        audit = list(session.execute(select(AuditEvent.action, AuditEvent.subject_id,
                                            AuditEvent.details)))
        erasure = session.get(ErasureRequest, erasure_id)
    stats = system.fal.stats()
    per_job = fal_requests_by_job(stats)

    # every accepted job: succeeded, or failed with the code of its permanent fault
    outcomes: Counter[str] = Counter()
    lost = 0
    for job_id, user in run.jobs.items():
        job = jobs.get(job_id)
        if job is None:
            lost += 1
            problems.append(f"job {job_id} of {user} is gone")
            continue
        expected = _expected(per_job.get(job_id, []), job, settings)
        outcomes[job.status if job.status == "succeeded" else f"failed {job.error_code}"] += 1
        if (job.status, job.error_code) != expected:
            problems.append(f"job {job_id}: {job.status}/{job.error_code}, expected {expected}; "
                            f"fal saw {[r['fault'] for r in per_job.get(job_id, [])]}")
        if job.status in ("queued", "processing"):
            lost += 1
    # every upload ready or rejected
    upload_states = Counter(u.status for u in uploads.values())
    for upload_id in list(run.uploads) + validating:
        if run.uploads.get(upload_id) == ERASED:
            continue
        upload = uploads.get(upload_id)
        if upload is None or upload.status not in ("ready", "rejected"):
            problems.append(f"upload {upload_id}: {upload and upload.status}")
    # the erasure: done, and nothing of the user left
    left = [k for store, prefix in user_locations(svc, ERASED) for k, _ in store.list_keys(prefix)]
    rows_left = sum(1 for j in jobs.values() if j.user_id == ERASED) + sum(
        1 for u in uploads.values() if u.user_id == ERASED)
    if erasure is None or erasure.status != "done" or left or rows_left:
        problems.append(f"erasure: {erasure and erasure.status}, {len(left)} objects, "
                        f"{rows_left} rows left")
    # exactly one result and one thumbnail per succeeded job, nothing else
    stored = {k for user in USERS for k, _ in svc.result_store.list_keys(f"results/{user}/")}
    expected_keys = {k for j in jobs.values() if j.status == "succeeded"
                     for k in (j.result_key, j.thumbnail_key)}
    if stored != expected_keys:
        problems.append(f"result objects: {len(stored - expected_keys)} extra, "
                        f"{len(expected_keys - stored)} missing")
    # no audit event twice
    seen = Counter((action, subject) for action, subject, _ in audit if action in ONCE_PER_SUBJECT)
    seen.update((f"tryon.invoked#{details.get('attempt')}", subject)
                for action, subject, details in audit if action == "tryon.invoked")
    duplicated = {key: n for key, n in seen.items() if n > 1}
    if duplicated:
        problems.append(f"duplicated audit events: {duplicated}")
    # double fal submissions: a request followed by another one for the same job
    # although it could have finished the job itself
    doubles = double_submissions(per_job)
    if doubles:
        problems.append(f"double fal submissions: {doubles}")
    # latency, and what the kills cost the jobs they hit
    latencies = sorted((j.completed_at - j.created_at).total_seconds()
                       for j in jobs.values() if j.status == "succeeded" and j.user_id != ERASED)
    p50 = statistics.median(latencies)
    hit_rows = []
    for subject, kill in run.hit:
        # the job itself, or a job that waited for the upload whose validation was hit
        hit_jobs = [j for j in jobs.values() if j.status == "succeeded"
                    and (j.id == subject or j.upload_id == subject)]
        for job in hit_jobs[:1]:
            latency = (job.completed_at - job.created_at).total_seconds()
            hit_rows.append(f"| kill in {kill} hit job {job.id[:8]} | latency {latency:.1f} s "
                            f"(p50 {p50:.1f} s) |")
            # A claim that died mid-submit waits out its lease before it is taken over.
            bound = settings.fal_in_doubt_seconds + 10
            if latency > p50 + bound:
                problems.append(f"the {kill} kill added {latency - p50:.0f} s (> {bound} s)")
    lines = [
        "| fault injected | detail |", "| --- | --- |",
        *(f"| {name} | {detail} |" for name, detail in run.faults),
        f"| fal, as the emulator counted | {stats['faults_injected']} |",
        f"| S3 proxy | {system.proxy.counts} |",
        "", "| outcome | value |", "| --- | --- |",
        f"| jobs accepted (202) | {len(run.jobs)} |",
        *(f"| jobs {name} | {n} |" for name, n in sorted(outcomes.items())),
        f"| jobs lost | {lost} |",
        f"| uploads | {dict(upload_states)} |",
        f"| erasure | {erasure and erasure.status}, {erasure and erasure.runs} run(s), "
        f"{len(left)} objects and {rows_left} rows left |",
        f"| result objects | {len(stored)} for {len(expected_keys) // 2} succeeded jobs |",
        f"| duplicated audit events | {len(duplicated)} |",
        f"| double fal submissions (emulator) | {sum(doubles.values())} |",
        f"| double fal submissions (our metric) | "
        f"{system.metric('fal_double_submissions_total'):.0f} |",
        f"| claims taken over | {system.metric('tryon_claims_taken_over_total'):.0f} |",
        f"| validations taken over | {system.metric('upload_validation_taken_over_total'):.0f} |",
        f"| job latency p50 / max | {p50:.1f} s / {max(latencies):.1f} s |",
        *hit_rows,
        f"| settled after the last fault | {settle_seconds:.0f} s |",
        f"| workers that exited on their own, restarted by the supervisor | "
        f"{system.supervised or 'none'} |",
        f"| app-side retries (503, 429, dropped) | {run.client.retries} |",
        f"| the app's polls during the faults | {dict(poller.answers)} |",
        f"| whole run | {total_seconds:.0f} s |",
    ]
    return Report("\n".join(lines), problems)


def _expected(requests: list[dict[str, Any]], job: TryOn, settings: Any) -> tuple[str, str | None]:
    if requests:
        fault = requests[-1]["fault"]
        if fault in PERMANENT_JOB_FAULTS:
            return "failed", PERMANENT_JOB_FAULTS[fault]
    if job.status == "failed" and job.error_code in ("fal.unavailable", "fal.rate_limited") \
            and job.fal_failures > settings.fal_max_retries:
        return "failed", job.error_code  # transient faults in a row used up its retries
    if (job.status, job.error_code) == ("failed", "fal.timeout") and job.fal_failures \
            and job.deadline_at is not None and job.completed_at >= job.deadline_at:
        return "failed", job.error_code  # retried faults ate the deadline: an honest end
    return "succeeded", None


def fal_requests_by_job(stats: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for request in stats["requests"].values():
        url = request.get("webhook_url")
        if url:
            query = parse_qs(urlsplit(url).query)
            by_job[query["job"][0]].append(request)
    for requests in by_job.values():
        requests.sort(key=lambda r: r["submitted_at"])
    return by_job


def double_submissions(per_job: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Per job, the requests followed by another one although they could have finished
    the job themselves (requests in submission order)."""
    return {job_id: n for job_id, requests in per_job.items()
            if (n := sum(1 for r in requests[:-1] if _could_finish(r))) > 0}


def _could_finish(request: dict[str, Any]) -> bool:
    """Not ended by fal with an error, and not hung: left alone, its webhook would
    have finished the job (a request we canceled counts: we did not leave it alone)."""
    failed_at_fal = request["status"] == "COMPLETED" and request["error_type"] not in (
        None, "request_cancelled")
    return not failed_at_fal and request["fault"] != "never_complete"


def _count(svc: Services, model: Any, *conditions: Any) -> int:
    with svc.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)


def _erasure_status(svc: Services) -> str | None:
    with svc.sessions() as session:
        return session.scalar(select(ErasureRequest.status).where(
            ErasureRequest.user_id == ERASED))


def _stuck(svc: Services) -> str:
    with svc.sessions() as session:
        jobs = list(session.scalars(select(TryOn).where(TryOn.status.in_(("queued", "processing")))))
        uploads = list(session.scalars(select(Upload).where(
            Upload.status.in_(("pending", "validating")))))
    return (f"not settled: {len(jobs)} jobs in flight "
            f"{[(j.id[:8], j.status, j.attempt, j.fal_request_id is not None) for j in jobs[:10]]}, "
            f"{len(uploads)} uploads {[(u.id[:8], u.status) for u in uploads[:10]]}, "
            f"erasure {_erasure_status(svc)}")
