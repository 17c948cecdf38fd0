"""The unit-test harness: the real domain code over stand-ins for every server.

- the database: SQLite in a file of the test's own, schema made by the real Alembic
  migrations (once per session, then copied per test);
- storage: `MemoryStorage` (shared/storage/memory.py) on the harness clock;
- fal: `ScriptedFal`, a FalGateway whose every answer the test scripts (a call
  nobody scripted fails the test);
- fal's media CDN: `FalMedia`, an httpx MockTransport behind the real
  `download_result` (its host allow-list, size cap and status handling still run);
- the broker: `DispatchRecorder`, which records what was sent and runs nothing
  unless asked (`Harness.run_sent`, `Harness.run_task` run the worker's real
  Celery tasks in-process);
- time: `FakeClock`, fixed until a test moves it;
- Redis (idempotency records): fakeredis.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import httpx
from sqlalchemy import select

from shared.access.idempotency import IdempotencyStore
from shared.core.db import make_engine, make_session_factory
from shared.core.tasks import celery_app
from shared.fal.gateway import FalFailure, FalResult, FalStatus, classify_http
from shared.models import AuditEvent, TryOn, Upload
from shared.services import Services
from shared.storage.base import sha256_b64
from shared.storage.memory import MemoryStorage
from shared.tryons import completion, submission
from shared.tryons import use_cases as tryons
from shared.tryons.state import FollowUp
from shared.uploads import use_cases as uploads
from shared.uploads.use_cases import IssuedUpload
from shared.uploads.validation import validate_upload
from tests.conftest import fixture_bytes, make_settings

START = datetime(2030, 1, 7, 9, 0, 0, tzinfo=UTC)
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


# --- time ------------------------------------------------------------------

class FakeClock:
    """A clock that stands still until `advance` moves it."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float | timedelta = 0.0, **delta: float) -> datetime:
        step = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        self.now += step + timedelta(**delta)
        return self.now


# --- the broker ------------------------------------------------------------

@dataclass(frozen=True)
class Sent:
    task: str
    args: tuple[Any, ...]
    countdown: float | None


@dataclass
class DispatchRecorder:
    """Stands in for `Services.dispatch` (shared.core.tasks.send): records each send
    and runs nothing. `broker_down` makes every send fail as with no broker."""

    sent: list[Sent] = field(default_factory=list)
    broker_down: bool = False

    def __call__(self, task: str, *args: Any, countdown: float | None = None) -> bool:
        if self.broker_down:
            return False
        self.sent.append(Sent(task, args, countdown))
        return True

    def names(self) -> list[str]:
        return [s.task for s in self.sent]

    def of(self, task: str) -> list[Sent]:
        return [s for s in self.sent if s.task == task]

    def take(self) -> list[Sent]:
        """Everything sent so far, forgotten here."""
        taken, self.sent = self.sent, []
        return taken


# --- fal -------------------------------------------------------------------

class Unscripted(AssertionError):
    """The code called fal in a way the test did not script."""


@dataclass(frozen=True)
class Submission:
    arguments: dict[str, Any]
    webhook_url: str | None
    start_timeout: float
    outcome: str | FalFailure  # the request id fal gave, or what it raised


class FalMedia:
    """fal's media CDN as `download_result` sees it (an httpx transport): scripted
    files by URL; anything else is a 404."""

    def __init__(self) -> None:
        self._files: dict[str, Callable[[httpx.Request], httpx.Response]] = {}
        self.requests: list[str] = []
        self._client: httpx.Client | None = None

    def serve(self, url: str, data: bytes, *, status: int = 200,
              headers: dict[str, str] | None = None) -> str:
        self._files[url] = lambda request: httpx.Response(status, content=data, headers=headers)
        return url

    def break_with(self, url: str, error: type[httpx.TransportError]) -> None:
        def broken(request: httpx.Request) -> httpx.Response:
            raise error("scripted transport failure", request=request)

        self._files[url] = broken

    def _handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.requests.append(url)
        handler = self._files.get(url)
        return handler(request) if handler else httpx.Response(404)

    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(transport=httpx.MockTransport(self._handle),
                                        follow_redirects=False)
        return self._client


class ScriptedFal:
    """A FalGateway (shared/fal/gateway.py) whose answers the test scripts.

    - `accept()` / `refuse(failure)` queue the outcome of the next `submit`;
    - `running(id)`, `finish(id, image)`, `fail_request(id, error_type)`,
      `status_fails(id, failure)` script what `status` and `result` say of a request
      (the last status scripted keeps being answered);
    - `cancel` records the id (`canceled`); `cancel_failure` makes it raise.
    Every call is recorded; an unscripted call raises `Unscripted`."""

    def __init__(self, media: FalMedia) -> None:
        self.media = media
        self._submits: deque[str | FalFailure] = deque()
        # Per request: the answers scripted, and the index of the next one not given.
        self._statuses: dict[str, list[FalStatus | FalFailure]] = {}
        self._next_status: dict[str, int] = {}
        self._results: dict[str, FalResult | FalFailure] = {}
        self._ids = itertools.count(1)
        self.submissions: list[Submission] = []
        self.status_checks: list[str] = []
        self.result_reads: list[str] = []
        self.canceled: list[str] = []
        self.cancel_failure: FalFailure | None = None

    # -- scripting ----------------------------------------------------------
    def accept(self, request_id: str | None = None) -> str:
        request_id = request_id or f"req-{next(self._ids)}"
        self._submits.append(request_id)
        return request_id

    def refuse(self, failure: FalFailure) -> FalFailure:
        self._submits.append(failure)
        return failure

    def running(self, request_id: str) -> None:
        self._statuses.setdefault(request_id, []).append(FalStatus(completed=False))

    def finish(self, request_id: str, image: bytes | None = None, *,
               url: str | None = None) -> str:
        """fal completed the request; its image is served from fal's CDN."""
        url = url or f"https://v3.fal.media/files/{request_id}.jpg"
        self.media.serve(url, fixture_bytes("chelsea.jpg") if image is None else image)
        self._statuses.setdefault(request_id, []).append(FalStatus(completed=True))
        self._results[request_id] = FalResult([url])
        return url

    def fail_request(self, request_id: str, error_type: str, *, status: int = 422) -> None:
        """fal completed the request with a model error (COMPLETED + error; the
        result body names the error type, as fal's 422 does)."""
        self._statuses.setdefault(request_id, []).append(
            FalStatus(completed=True, error="error", error_type=error_type))
        self._results[request_id] = classify_http(status, {}, None, error_type)

    def status_fails(self, request_id: str, failure: FalFailure) -> None:
        self._statuses.setdefault(request_id, []).append(failure)

    def result_fails(self, request_id: str, failure: FalFailure) -> None:
        self._results[request_id] = failure

    # -- the gateway --------------------------------------------------------
    def submit(self, arguments: dict[str, Any], webhook_url: str | None, *,
               start_timeout: float) -> str:
        if not self._submits:
            raise Unscripted("submit was not scripted")
        outcome = self._submits.popleft()
        self.submissions.append(Submission(arguments, webhook_url, start_timeout, outcome))
        if isinstance(outcome, FalFailure):
            raise outcome
        return outcome

    def status(self, request_id: str) -> FalStatus:
        self.status_checks.append(request_id)
        answers = self._statuses.get(request_id)
        if not answers:
            raise Unscripted(f"status of {request_id} was not scripted")
        # Each answer once, in order; the last keeps being given until another is added.
        index = min(self._next_status.get(request_id, 0), len(answers) - 1)
        self._next_status[request_id] = index + 1
        answer = answers[index]
        if isinstance(answer, FalFailure):
            raise answer
        return answer

    def result(self, request_id: str) -> FalResult:
        self.result_reads.append(request_id)
        if request_id not in self._results:
            raise Unscripted(f"result of {request_id} was not scripted")
        answer = self._results[request_id]
        if isinstance(answer, FalFailure):
            raise answer
        return answer

    def cancel(self, request_id: str) -> None:
        self.canceled.append(request_id)
        if self.cancel_failure is not None:
            raise self.cancel_failure


# --- everything together ---------------------------------------------------

@dataclass(repr=False)
class Harness:
    svc: Services
    clock: FakeClock
    storage: MemoryStorage
    fal: ScriptedFal
    media: FalMedia
    dispatch: DispatchRecorder
    redis: fakeredis.FakeRedis

    def advance(self, seconds: float | timedelta = 0.0, **delta: float) -> datetime:
        return self.clock.advance(seconds, **delta)

    # -- running the worker's real tasks ------------------------------------
    @staticmethod
    def run_task(name: str, *args: Any, task_id: str | None = None) -> Any:
        """The worker's Celery task `name`, its body run here as a delivery would
        (with a request id; autoretry re-raises, as for a task called directly).
        The caller has put the harness services in place (`use_services`)."""
        task = celery_app.tasks[name]
        task.push_request(id=task_id or uuid.uuid4().hex, headers={})
        try:
            return task.run(*args)
        finally:
            task.pop_request()

    def run_sent(self, name: str | None = None) -> list[Any]:
        """Run (and forget) what was sent so far, of one task or all, in order;
        what those tasks send is recorded for the next call."""
        chosen = [s for s in self.dispatch.sent if name is None or s.task == name]
        self.dispatch.sent = [s for s in self.dispatch.sent if s not in chosen]
        return [self.run_task(s.task, *s.args) for s in chosen]

    # -- uploads ------------------------------------------------------------
    def issue(self, user: str = "alice", photo: str = "astronaut.jpg", *,
              content_type: str | None = None, data: bytes | None = None,
              checksum: bool = True) -> tuple[IssuedUpload, bytes]:
        """Presign an upload for (by default) a fixture photo; nothing is PUT yet."""
        data = fixture_bytes(photo) if data is None else data
        content_type = content_type or CONTENT_TYPES[photo.rsplit(".", 1)[-1]]
        issued = uploads.presign(self.svc, user, content_type=content_type,
                                 content_length=len(data),
                                 checksum=sha256_b64(data) if checksum else None)
        return issued, data

    def put(self, issued: IssuedUpload, data: bytes) -> None:
        """The app's PUT to the presigned URL."""
        self.storage.put_url(issued.put.url, data, issued.put.headers)

    def ready_upload(self, user: str = "alice", photo: str = "astronaut.jpg") -> Upload:
        """An upload presigned, PUT, confirmed and validated: `ready`."""
        issued, data = self.issue(user, photo)
        self.put(issued, data)
        uploads.confirm(self.svc, user, issued.upload.key)
        outcome = validate_upload(self.svc, issued.upload.id)
        assert outcome.status == "ready", outcome
        self.dispatch.take()
        return self.upload(issued.upload.id)

    # -- try-ons ------------------------------------------------------------
    def start_job(self, user: str = "alice", upload: Upload | None = None, *,
                  hairstyle: str = "bob", prompt: str | None = None) -> TryOn:
        """A queued job on a ready upload (its `tryons.run` forgotten)."""
        upload = upload or self.ready_upload(user)
        job = tryons.start(self.svc, user, upload_id=upload.id, key=None,
                           hairstyle_id=hairstyle, prompt=prompt, locale="en")
        self.dispatch.take()
        return job

    def submitted_job(self, user: str = "alice", upload: Upload | None = None
                      ) -> tuple[TryOn, str, list[FollowUp]]:
        """A job fal accepted: (the row, its request id, the follow-ups of the run)."""
        job = self.start_job(user, upload)
        request_id = self.fal.accept()
        follow = submission.run(self.svc, job.id)
        row = self.job(job.id)
        assert row is not None and row.fal_request_id == request_id, row
        return row, request_id, follow

    def succeeded_job(self, user: str = "alice", upload: Upload | None = None) -> TryOn:
        """A job finished with fal's result stored (by a status poll)."""
        job, request_id, _ = self.submitted_job(user, upload)
        self.fal.finish(request_id)
        assert completion.poll(self.svc, job.id, job.attempt) == []
        row = self.job(job.id)
        assert row is not None and row.status == "succeeded", row
        return row

    # -- reading rows -------------------------------------------------------
    def upload(self, upload_id: str) -> Upload:
        with self.svc.sessions() as session:
            row = session.get(Upload, upload_id)
        assert row is not None, upload_id
        return row

    def job(self, job_id: str) -> TryOn | None:
        with self.svc.sessions() as session:
            return session.get(TryOn, job_id)

    def audit(self, subject_id: str) -> list[str]:
        with self.svc.sessions() as session:
            return list(session.scalars(select(AuditEvent.action).where(
                AuditEvent.subject_id == subject_id).order_by(AuditEvent.id)))

    def objects(self, bucket: str | None = None) -> set[str]:
        """Every key in one bucket (or both)."""
        names = [bucket] if bucket else [self.svc.settings.uploads_bucket,
                                         self.svc.settings.processed_bucket]
        return {key for name in names for key in self.storage.buckets.get(name, {})}


def build_harness(database_url: str, **settings: Any) -> Harness:
    """A harness over an already migrated database (see tests/unit/conftest.py)."""
    clock = FakeClock()
    storage = MemoryStorage(clock=clock)
    media = FalMedia()
    fal = ScriptedFal(media)
    dispatch = DispatchRecorder()
    engine = make_engine(database_url)
    svc = Services(settings=make_settings(database_url=database_url, **settings), engine=engine,
                   sessions=make_session_factory(engine), storage=storage, clock=clock,
                   dispatch=dispatch)
    svc.fal = fal
    svc.scanners = []
    redis = fakeredis.FakeRedis()
    idempotency = IdempotencyStore("redis://unused")
    idempotency._redis = redis
    svc.idempotency = idempotency
    return Harness(svc=svc, clock=clock, storage=storage, fal=fal, media=media,
                   dispatch=dispatch, redis=redis)
