"""The production shape run for real (issue 16, point 7): the Procfile's processes,
each by its own honcho in production settings, talking only by URL
(tests/production/stack.py). One started stack serves every test here: an upload
and a try-on through `web` with a token of the test's auth server; Flower behind its
login seeing every worker and the finished tasks; every process group's metrics on
its own port, the flow's counters on the group that did the work; Sentry receiving
one event for a failing request and one for a task that fails for good."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from celery import Celery
from PIL import Image

from devstack.procs import wait_until
from shared.core import task_names as names
from shared.core.observability import reset_correlation_id, set_correlation_id
from shared.core.task_names import ALL_QUEUES
from tests.conftest import SECRET_PATTERN, fixture_bytes
from tests.e2e.test_dev_stack import _non_loopback_address
from tests.production.metrics_reading import counts, label_values, moved, scrape, sums
from tests.production.procfile import WEB, process_types, serves_metrics
from tests.production.stack import Stack

pytestmark = pytest.mark.integration

USER = "production-user"
FLOW_TIMEOUT = 30.0
SETTLE_TIMEOUT = 10.0  # a task's duration is observed just after the job reads as done


@dataclass
class Flow:
    """What one upload and one try-on did, and what every group's counters did meanwhile."""

    upload: dict[str, Any]
    job: dict[str, Any]
    result: httpx.Response
    thumbnail: httpx.Response | None
    public_metrics: httpx.Response
    request_ids: dict[str, str]  # X-Request-ID of the request that sent each task
    moved: dict[str, dict[str, float]]  # by process type, only the flow's series
    expected: dict[str, dict[str, float]]


def expected_counters(stack: Stack) -> dict[str, dict[str, float]]:
    """What the flow moves, on the group that does it: `web` answers the API (and
    counts the public /metrics it refuses); each task counts where its queue is
    consumed, as the Procfile's -Q lists say. Histograms by their _count."""
    by_task = {
        names.VALIDATE_UPLOAD: {'upload_validation_total{outcome="ready"}': 1},
        names.RUN_TRYON: {'fal_submit_total{result="accepted"}': 1},
        names.COMPLETE_TRYON: {  # completed by fal's webhook through `web`, not by polling
            "fal_request_success_total": 1, "fal_request_duration_seconds_count": 1,
            'tryon_jobs_total{outcome="succeeded"}': 1,
            'tryon_job_duration_seconds_count{outcome="succeeded"}': 1},
    }
    expected: dict[str, dict[str, float]] = {
        name: {} for name in stack.types if serves_metrics(name)}
    expected[WEB] = {"upload_issued_total": 1, "upload_confirmed_total": 1,
                     'api_errors_total{code="request.not_found"}': 1}
    for task, counters in by_task.items():
        queue = names.QUEUES[task]
        expected[stack.type_running(queue)].update({
            f'task_duration_seconds_count{{task="{task}"}}': 1,
            f'task_queue_latency_seconds_count{{queue="{queue}",task="{task}"}}': 1,
            **counters})
    return expected


def scrape_all(stack: Stack) -> dict[str, dict[str, float]]:
    return {name: counts(scrape(t.metrics_url)) for name, t in stack.types.items()
            if t.metrics_url}


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def poll(api: httpx.Client, path: str, final: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + FLOW_TIMEOUT
    while True:
        body = api.get(path).json()
        if body["status"] in final or time.monotonic() > deadline:
            return dict(body)
        time.sleep(0.2)


def upload_and_try_on(stack: Stack, token: str,
                      request_ids: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """presign, PUT, confirm, then a try-on of the upload; `request_ids` are the
    X-Request-IDs of the confirm and of the try-on's POST, by the task each sends."""
    photo = fixture_bytes("astronaut.jpg")
    with httpx.Client(base_url=stack.web_url, headers={"Authorization": f"Bearer {token}"},
                      timeout=15) as api:
        issued = api.post("/v1/uploads/presign", json={
            "contentType": "image/jpeg", "contentLength": len(photo),
            "checksum": sha256_b64(photo)})
        assert issued.status_code == 201, issued.text
        issued_body = issued.json()
        put = httpx.put(issued_body["uploadUrl"], content=photo, headers=issued_body["headers"],
                        timeout=15)
        assert put.status_code == 200, put.text
        confirmed = api.post("/v1/uploads/confirm", json={"key": issued_body["key"]},
                             headers={"X-Request-ID": request_ids[names.VALIDATE_UPLOAD]})
        assert confirmed.status_code == 202, confirmed.text
        upload = poll(api, f"/v1/uploads/{issued_body['uploadId']}", ("ready", "rejected"))
        if upload["status"] != "ready":
            return upload, {}
        started = api.post("/v1/try-ons", json={"uploadId": upload["uploadId"],
                                                "hairstyleId": "bob", "locale": "en"},
                           headers={"X-Request-ID": request_ids[names.RUN_TRYON]})
        assert started.status_code == 202, started.text
        job = poll(api, f"/v1/try-ons/{started.json()['jobId']}", ("succeeded", "failed"))
    return upload, job


@pytest.fixture(scope="module")
def flow(stack: Stack) -> Flow:
    expected = expected_counters(stack)
    series = {key for counters in expected.values() for key in counters}
    before = scrape_all(stack)
    public_metrics = httpx.get(f"{stack.web_url}/metrics", timeout=5)
    request_ids = {task: f"flow-{task}-{secrets.token_hex(6)}"
                   for task in (names.VALIDATE_UPLOAD, names.RUN_TRYON)}
    upload, job = upload_and_try_on(stack, stack.auth.token(USER), request_ids)

    def flow_moved() -> dict[str, dict[str, float]]:
        return {name: {k: v for k, v in moved(before[name], now).items() if k in series}
                for name, now in scrape_all(stack).items()}

    if job.get("status") == "succeeded":
        wait_until(lambda: flow_moved() == expected, SETTLE_TIMEOUT, interval=0.2)
        time.sleep(0.5)  # nothing more may move
    result = httpx.get(job["resultUrl"], timeout=15) if "resultUrl" in job else None
    thumbnail = httpx.get(job["thumbnailUrl"], timeout=15) if "thumbnailUrl" in job else None
    assert upload["status"] == "ready", upload
    assert job["status"] == "succeeded", job
    assert result is not None
    return Flow(upload, job, result, thumbnail, public_metrics, request_ids, flow_moved(),
                expected)


def task_correlation_ids(log: str, task: str) -> list[str | None]:
    """The correlation id of each `Task <task>[…] succeeded` line of a honcho log
    (`time name.1 | {json}`)."""
    ids = []
    for line in log.splitlines():
        record = line.partition(" | ")[2]
        if record.startswith("{") and f'"Task {task}[' in record and "succeeded in" in record:
            ids.append(json.loads(record).get("correlation_id"))
    return ids


def test_release_migrates_and_hardens_the_buckets_alone_before_the_rest(stack: Stack) -> None:
    assert "database is at the newest migration" in stack.release_log
    steps = [line for line in stack.release_log.splitlines() if "hf-prod-" in line]
    assert len(steps) >= 8, stack.release_log  # four or five steps for each bucket
    assert not [line for line in steps if "not applied" in line], stack.release_log


def test_an_upload_and_a_try_on_go_through_the_procfiles_processes(stack: Stack,
                                                                   flow: Flow) -> None:
    for answer in filter(None, (flow.result, flow.thumbnail)):
        assert answer.status_code == 200, answer.text[:300]
        with Image.open(io.BytesIO(answer.content)) as image:
            assert image.width > 0 and image.height > 0
    # Every process runs in production settings (the Procfile's default; the test
    # sets no HAIRFLUENCER_ENV) and was started by its own honcho.
    for process in stack.types.values():
        (group,) = process.groups()
        environ = Path(f"/proc/{group}/environ").read_bytes().split(b"\0")
        assert b"HAIRFLUENCER_ENV=production" in environ, process.name
    # The request's correlation id goes with the task it sent (SPEC §8).
    for task, request_id in flow.request_ids.items():
        log = stack.types[stack.type_running(names.QUEUES[task])].log
        assert task_correlation_ids(log, task) == [request_id], task
    # Only the auth server's tokens are taken: a development (HS256) token is not.
    now = int(time.time())
    development = jwt.encode({"sub": USER, "iss": stack.auth.issuer, "aud": stack.auth.audience,
                              "iat": now, "exp": now + 600}, secrets.token_urlsafe(40),
                             algorithm="HS256")
    refused = httpx.get(f"{stack.web_url}/v1/try-ons",
                        headers={"Authorization": f"Bearer {development}"}, timeout=10)
    assert refused.status_code == 401, refused.text
    # No credential in any process's log, nor on any process's command line (which
    # `ps` shows every user of the host).
    logs = stack.release_log + "".join(p.log for p in stack.types.values())
    running = stack.command_lines()
    assert len(running) > len(stack.types), running  # each honcho and what it started
    command_lines = "\n".join(running)
    for secret in stack.secrets:
        assert secret not in logs
        assert secret not in command_lines
    leak = SECRET_PATTERN.search(logs)
    assert leak is None, logs[leak.start() - 200:leak.end() + 50]


def test_flower_behind_its_login_lists_every_worker_and_the_finished_tasks(
        stack: Stack, flow: Flow) -> None:
    url, (user, password) = stack.flower_url, stack.flower_login
    for path in ("/api/workers", "/api/tasks", "/"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 401, path
    assert httpx.get(f"{url}/api/workers", auth=(user, password + "x"),
                     timeout=10).status_code == 401
    with httpx.Client(base_url=url, auth=(user, password), timeout=15) as flower:
        workers = flower.get("/api/workers", params={"refresh": "true"}).json()
        assert set(workers) == {w.node for w in stack.workers.values()}
        for worker in stack.workers.values():
            served = {queue["name"] for queue in workers[worker.node]["active_queues"]}
            assert served == set(worker.queues), worker.node

        finished = {names.VALIDATE_UPLOAD: flow.upload["uploadId"],
                    names.COMPLETE_TRYON: flow.job["jobId"]}

        def seen() -> dict[str, list[dict[str, Any]]]:
            return {task: [t for t in flower.get("/api/tasks", params={
                "taskname": task, "state": "SUCCESS"}).json().values()
                if subject in (t.get("args") or "")] for task, subject in finished.items()}

        # Task events reach Flower asynchronously.
        wait_until(lambda: all(seen().values()), 15, interval=0.5)
        tasks = seen()
    for task, found in tasks.items():
        assert len(found) == 1, (task, found)
        node = stack.workers[stack.type_running(names.QUEUES[task])].node
        assert found[0]["worker"] == node, (task, found[0]["worker"])


def test_every_process_serves_its_own_metrics_and_the_flow_counted_where_it_ran(
        stack: Stack, flow: Flow) -> None:
    # The published port carries none: they are on each group's METRICS_PORT.
    assert flow.public_metrics.status_code == 404
    assert flow.public_metrics.json()["error"]["code"] == "request.not_found"
    serving = [name for name, t in stack.types.items() if t.metrics_url]
    assert serving == [n for n in process_types(stack.procfile) if serves_metrics(n)]
    ports = {stack.types[name].env["METRICS_PORT"] for name in serving}
    assert len(ports) == len(serving)
    for name in serving:
        response = httpx.get(stack.types[name].metrics_url or "", timeout=5)
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("text/plain"), name
        for series, value in label_values(response.text):  # no id or URL as a label
            assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}|://|/", value), (name, series, value)
    wrong = {name: (flow.moved[name], expected) for name, expected in flow.expected.items()
             if flow.moved[name] != expected}
    assert not wrong, f"(moved, expected) by process type: {wrong}"
    for name, expected in flow.expected.items():  # observed durations, not only counts
        observed = sums(scrape(stack.types[name].metrics_url or ""))
        for series in expected:
            if "_count" in series:
                assert observed[series.replace("_count", "_sum", 1)] > 0, (name, series)
    # web's endpoint also reads every queue's length from the broker at scrape time.
    web = scrape(stack.types[WEB].metrics_url or "")
    assert "celery_queue_length_up 1.0" in web
    for queue in ALL_QUEUES:
        assert f'celery_queue_length{{queue="{queue}"}}' in web, queue


def test_every_port_of_the_stack_listens_on_loopback_only(stack: Stack) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    ports = [int(stack.web_url.rsplit(":", 1)[1]), int(stack.flower_url.rsplit(":", 1)[1])]
    ports += [int(t.env["METRICS_PORT"]) for t in stack.types.values() if t.metrics_url]
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()


# --- Sentry -------------------------------------------------------------------

SIGNATURE = secrets.token_hex(32)
SIGNED_URL = ("https://uploads.s3.amazonaws.com/u/zara/selfie.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
              "&X-Amz-Credential=AKIAEXAMPLE%2F20261203%2Fus-east-1%2Fs3%2Faws4_request"
              f"&X-Amz-Signature={SIGNATURE}")
FAL_MEDIA_PATH = f"/files/zebra/{secrets.token_hex(12)}.png"
SENTRY_USER = "sentry-user"


def refuse_uploads_of(database_url: str, user_id: str) -> None:
    """The database refuses this user's new uploads with an error the API has no
    answer for (as a broken migration or a hand-made trigger would): the request
    fails with a 500 in production settings without any hook in the code. The
    message carries a signed URL, which must not reach Sentry."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"""
            CREATE FUNCTION refuse_upload() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'refused after signing {SIGNED_URL.replace("%", "%%")}'; END $$;
            CREATE TRIGGER refuse_upload BEFORE INSERT ON uploads FOR EACH ROW
            WHEN (NEW.user_id = '{user_id}') EXECUTE FUNCTION refuse_upload();""")


def send_as(sender: Celery, correlation_id: str, task: str, *args: Any) -> str:
    """Send as the API or a task does: the correlation id in effect goes into the
    message's headers (shared.core.tasks' before_task_publish handler)."""
    token = set_correlation_id(correlation_id)
    try:
        return str(sender.send_task(task, args=list(args), queue=names.QUEUES[task]).id)
    finally:
        reset_correlation_id(token)


def test_a_failing_request_and_a_task_failing_for_good_each_send_one_event(
        stack: Stack) -> None:
    inbox = stack.inbox
    # (a) A request that fails with a 500.
    refuse_uploads_of(stack.database_url, SENTRY_USER)
    request_id = "corr-api-" + secrets.token_hex(6)
    bearer = stack.auth.token(SENTRY_USER)
    data = secrets.token_bytes(2048)
    failed = httpx.post(f"{stack.web_url}/v1/uploads/presign", timeout=15, headers={
        "Authorization": f"Bearer {bearer}", "X-Request-ID": request_id}, json={
        "contentType": "image/jpeg", "contentLength": len(data), "checksum": sha256_b64(data)})
    assert failed.status_code == 500, failed.text
    assert failed.headers["X-Request-ID"] == request_id
    assert failed.json()["error"]["code"] == "internal.error"

    # (b) A task that fails for good: a completion this version cannot read (a key it
    # does not know, as a newer version might send), not retried; it carries what a
    # message must never leak.
    task_request = "corr-task-" + secrets.token_hex(6)
    sender = Celery("production-test-sender", broker=stack.broker_url)
    try:
        task_id = send_as(sender, task_request, names.COMPLETE_TRYON, str(uuid.uuid4()), 1, {
            "ok": True, "request_id": "req-1", "image_urls": [f"https://v3.fal.media{FAL_MEDIA_PATH}"],
            "result_url": SIGNED_URL, "webhook_token": bearer})
    finally:
        sender.close()

    api_events = inbox.wait_for(lambda: inbox.events_tagged(request_id), timeout=20)
    task_events = inbox.wait_for(lambda: inbox.events_tagged(task_request), timeout=30)
    assert len(api_events) == 1, [e.get("tags") for e in inbox.events()]
    assert len(task_events) == 1, [e.get("tags") for e in inbox.events()]
    (event,) = api_events
    assert event["request"]["url"].endswith("/v1/uploads/presign")
    assert event["environment"] == "production"
    (event,) = task_events
    assert event["tags"]["celery_task_id"] == task_id
    assert event["exception"]["values"][-1]["type"] == "TypeError"
    assert event["environment"] == "production"

    events = api_events + task_events
    text = json.dumps(events)
    for secret in (SIGNATURE, FAL_MEDIA_PATH, bearer, sha256_b64(data), *stack.secrets):
        assert secret not in text, f"a secret ({secret[:6]}…) in a Sentry event"
    for sent in events:
        request = sent.get("request") or {}
        assert "data" not in request, "a request body in a Sentry event"
        assert not {str(h).lower() for h in request.get("headers") or {}} & {
            "authorization", "cookie"}, "a credential header in a Sentry event"
    # Nothing else went wrong anywhere in the stack while this module ran.
    others = [e for e in inbox.events()
              if (e.get("tags") or {}).get("correlation_id") not in (request_id, task_request)]
    assert not others, [(e.get("tags"), e.get("exception") or e.get("logentry")) for e in others]

