"""Partial failures while a validation finishes, on the real processes
(tests/faults/system.py): a dependency that fails is retried and never counted as
a crash; a worker that dies is.

Three selfies validate at once, each meeting one fault:

- `brownout`: S3 refuses every write of its sanitized copy (503 SlowDown) until
  at least as many validation runs as the crash limit have failed on it, while
  reads go through. Before the fix each failed run was a crash, and the selfie
  was rejected as `upload.validation_failed` after the third;
- `dropped`: PostgreSQL drops every connection of the system just as its sanitized
  copy is sent to S3 (the proxy cuts them before forwarding the write), the one
  holding the upload's row lock among them, so the row's update fails after the
  copy was written;
- `killed`: the prefork child validating it is SIGKILLed while it reads the raw
  selfie, a real crash, which the redelivered message counts (crashes 2 while it
  runs) and takes over.

All three end `ready` with no crash left on the row, one `upload.validated` each,
and exactly one validation taken over (the kill's).

Run: bash devstack/test -q -s -m faults tests/faults -k dependencies   (~1 minute)
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from devstack.procs import wait_until
from shared.core.task_names import VALIDATE_UPLOAD
from shared.models import AuditEvent, Upload
from shared.services import Services
from shared.uploads.validation import MAX_CRASHES
from tests.conftest import fixture_bytes
from tests.faults.app_client import AppClient
from tests.faults.system import System

pytestmark = pytest.mark.faults

SELFIE = fixture_bytes("astronaut.jpg")
TIMEOUT = 90.0
# The raw read of `killed` is held 4 s, the window in which the suite finds the
# child running it (Celery's inspect takes up to 1 s): a read timeout above that
# keeps the child waiting in the read instead of giving up on S3 first.
ENV = {"S3_TIMEOUT_SECONDS": "20"}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = System(tmp_path_factory.mktemp("validation-faults"), extra_env=ENV).start()
    try:
        yield running
    finally:
        running.stop()


class CrashSampler(threading.Thread):
    """Polls the uploads' crash counts: the highest each one reached."""

    def __init__(self, svc: Services, ids: list[str]) -> None:
        super().__init__(daemon=True, name="crash-sampler")
        self.svc, self.ids = svc, ids
        self.highest = dict.fromkeys(ids, 0)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def run(self) -> None:
        while not self._halt.wait(0.1):
            try:
                with self.svc.sessions() as session:
                    rows = list(session.execute(select(Upload.id, Upload.validation_crashes)
                                                .where(Upload.id.in_(self.ids))))
            except Exception:  # noqa: BLE001, S112 - the database is being cut: sample again
                continue
            for upload_id, crashes in rows:
                self.highest[upload_id] = max(self.highest[upload_id], crashes)


def test_dependency_failures_while_finishing_are_retried_and_only_crashes_count(
        system: System) -> None:
    settings = system.settings()
    client = AppClient(system.api_url, settings)
    svc = Services.from_settings(settings)
    proxy = system.proxy
    started = time.monotonic()
    takeovers_before = system.metric("upload_validation_taken_over_total")
    # A run ends only when every try of its write was refused (or one went through),
    # and one upload's runs follow each other: this many refusals mean at least
    # MAX_CRASHES runs failed whole, as many as made a crash-counted selfie rejected.
    refused_for_max_crashes_runs = _tries_per_call(svc) * MAX_CRASHES

    brownout, dropped, killed = "/sanitized/brownout/", "/sanitized/dropped/", "/uploads/killed/"
    done: dict[str, float] = {}
    proxy.refuse_writes(brownout)
    proxy.before(dropped, "PUT", lambda: done.update({
        "database cut": time.monotonic() - started,
        "connections cut": system.terminate_db_connections()}))
    proxy.delay(killed, 4)  # the window in which the validator is killed
    with ThreadPoolExecutor(3) as pool:
        ids = dict(zip(("brownout", "dropped", "killed"), pool.map(
            lambda user: client.upload(user, SELFIE), ("brownout", "dropped", "killed")),
            strict=True))
    sampler = CrashSampler(svc, list(ids.values()))
    sampler.start()

    while time.monotonic() - started < TIMEOUT and not _all_finished(svc, ids):
        now = time.monotonic() - started
        if "kill" not in done and proxy.seen("delayed", "GET", killed) \
                and _owner(svc, ids["killed"]) is not None:
            _kill_validation_of(system, ids["killed"])
            done["kill"] = now
        if "kill" in done and "kill window closed" not in done \
                and sampler.highest[ids["killed"]] >= 2:
            proxy.delay(killed, 0)  # the redelivery claimed it, counting the crash
            done["kill window closed"] = now
        if "brownout over" not in done and proxy.seen(
                "refused_writes", "PUT", brownout) >= refused_for_max_crashes_runs:
            proxy.refuse_writes(brownout, on=False)
            done["brownout over"] = now
        time.sleep(0.1)
    sampler.stop()
    proxy.delay(killed, 0)
    proxy.refuse_writes(brownout, on=False)

    rows = _rows(svc, ids)
    report = {
        "seconds": round(time.monotonic() - started, 1), "faults": done,
        "rows": {user: (rows[i].status, rows[i].rejection_code, rows[i].validation_crashes)
                 for user, i in ids.items()},
        "highest crash count": {user: sampler.highest[i] for user, i in ids.items()},
        "refused sanitized writes (brownout)": proxy.seen("refused_writes", "PUT", brownout),
        "sanitized writes (dropped)": proxy.seen("forwarded", "PUT", dropped),
        "refused writes meaning MAX_CRASHES runs": refused_for_max_crashes_runs,
    }
    print(f"\nvalidation faults: {report}", flush=True)
    assert {"kill", "database cut", "brownout over"} <= done.keys(), report
    # Every selfie ready, with no crash left on the row and one outcome each.
    assert report["rows"] == {user: ("ready", None, 0) for user in ids}, report
    assert all(_validated_events(svc, i) == 1 for i in ids.values()), report
    # The brownout outlasted as many runs as the crash limit, never counted.
    assert report["refused sanitized writes (brownout)"] >= refused_for_max_crashes_runs
    assert report["highest crash count"]["brownout"] <= 1, report  # only while a run held it
    # The cut hit the finish after its copy was written: the retry wrote it again.
    assert report["sanitized writes (dropped)"] >= 2, report
    assert report["highest crash count"]["dropped"] <= 1, report
    # The kill was a crash: counted, and the only validation taken over.
    assert report["highest crash count"]["killed"] >= 2, report
    assert system.metric("upload_validation_taken_over_total") - takeovers_before == 1


def _tries_per_call(svc: Services) -> int:
    """How often botocore tries one S3 call, as the workers' client is configured
    (legacy mode's `max_attempts` counts retries, standard mode's attempts)."""
    retries = svc.storage.client.meta.config.retries  # type: ignore[attr-defined]
    if "total_max_attempts" in retries:
        return int(retries["total_max_attempts"])
    return int(retries.get("max_attempts", 4)) + 1


def _kill_validation_of(system: System, upload_id: str) -> None:
    found: list[dict[str, object]] = []

    def running() -> bool:
        found[:] = [t for t in system.active_tasks() if t["name"] == VALIDATE_UPLOAD
                    and t.get("args") and t["args"][0] == upload_id and t.get("worker_pid")]
        return bool(found)

    assert wait_until(running, 10, interval=0.2), f"no validation of {upload_id} running"
    os.kill(int(str(found[0]["worker_pid"])), signal.SIGKILL)


def _owner(svc: Services, upload_id: str) -> str | None:
    try:
        with svc.sessions() as session:
            return session.scalar(select(Upload.validation_owner).where(Upload.id == upload_id))
    except Exception:  # noqa: BLE001 - the database is being cut
        return None


def _rows(svc: Services, ids: dict[str, str]) -> dict[str, Upload]:
    with svc.sessions() as session:
        return {u.id: u for u in session.scalars(select(Upload).where(
            Upload.id.in_(list(ids.values()))))}


def _all_finished(svc: Services, ids: dict[str, str]) -> bool:
    try:
        rows = _rows(svc, ids)
    except Exception:  # noqa: BLE001 - the database is being cut
        return False
    return len(rows) == len(ids) and all(r.status in ("ready", "rejected") for r in rows.values())


def _validated_events(svc: Services, upload_id: str) -> int:
    with svc.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.subject_id == upload_id, AuditEvent.action == "upload.validated")) or 0)
