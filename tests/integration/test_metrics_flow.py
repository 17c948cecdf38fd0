"""Metrics from every process (issue 16, point 3), read as a scraper on another host
reads them: the API (gunicorn, two workers), a validation worker (prefork, two
children), an I/O worker (threads) and beat run as process groups of their own, each
with its own PROMETHEUS_MULTIPROC_DIR and METRICS_PORT, talking only through
PostgreSQL, a Redis of the test's own, LocalStack's S3 and the fal emulator. An upload
and a try-on go through; every counter that moved, moved by exactly what happened,
on the endpoint of the group that did it. Beat runs with its passes an hour apart, so
none falls inside the flow (its own endpoint is read and must show nothing moved)."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.procs import ManagedProcess, free_port, python_env, wait_until
from devstack.redis_server import start_redis
from shared.core.config import Settings
from shared.core.task_names import ALL_QUEUES
from tests.conftest import DEV_SECRET, fixture_bytes
from tests.integration.test_upload_flow import sha256_b64
from tests.production.metrics_reading import counts, moved, scrape

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USER = "metrics-user"
START_TIMEOUT = 60.0
FLOW_TIMEOUT = 30.0

# What one upload and one try-on move, by the group that does it. Histograms by
# their _count (one observation each); counters by their value.
EXPECTED = {
    "api": {
        "upload_issued_total": 1,
        "upload_confirmed_total": 1,
        # the public port's /metrics, asked once below
        'api_errors_total{code="request.not_found"}': 1,
    },
    "validation": {
        'upload_validation_total{outcome="ready"}': 1,
        'task_duration_seconds_count{task="uploads.validate"}': 1,
        'task_queue_latency_seconds_count{queue="uploads",task="uploads.validate"}': 1,
    },
    "io": {
        'task_duration_seconds_count{task="tryons.run"}': 1,
        'task_queue_latency_seconds_count{queue="tryons",task="tryons.run"}': 1,
        'fal_submit_total{result="accepted"}': 1,
        # completed by fal's webhook (through the API), not by polling
        'task_duration_seconds_count{task="tryons.complete"}': 1,
        'task_queue_latency_seconds_count{queue="tryons_done",task="tryons.complete"}': 1,
        "fal_request_success_total": 1,
        "fal_request_duration_seconds_count": 1,
        'tryon_jobs_total{outcome="succeeded"}': 1,
        'tryon_job_duration_seconds_count{outcome="succeeded"}': 1,
    },
    "beat": {},
}


@dataclass
class Group:
    process: ManagedProcess
    metrics_url: str


@dataclass
class System:
    api_base: str  # the published port
    groups: dict[str, Group]


@pytest.fixture
def system(settings: Settings, svc, emulator, tmp_path: Path) -> Iterator[System]:
    """The four process groups, started at once; stopped before svc empties the tables."""
    redis = start_redis(tmp_path / "redis")  # queue names are fixed: a broker of our own
    api_port = free_port()
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR")
            if key in os.environ}
    env = python_env(
        base, HAIRFLUENCER_ENV="development", DATABASE_URL=settings.database_url,
        REDIS_URL=redis.url, CELERY_BROKER_URL=redis.url,
        S3_ENDPOINT_URL=settings.s3_endpoint_url, S3_UPLOADS_BUCKET=settings.uploads_bucket,
        S3_PROCESSED_BUCKET=settings.processed_bucket, AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test", S3_REGION="us-east-1", JWT_DEV_SECRET=DEV_SECRET,
        FAL_KEY="test-key", FAL_QUEUE_HOST=settings.fal_queue_host,
        FAL_WEBHOOK_JWKS_URL=settings.fal_webhook_jwks_url,
        FAL_MEDIA_HOSTS=settings.fal_media_hosts, SSL_CERT_FILE=str(emulator.ca_bundle_path),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{api_port}", USER_RATE_LIMIT="1000/second",
        BEAT_INTERVAL_SECONDS="3600", RECONCILE_INTERVAL_SECONDS="3600",
        METRICS_ADDRESS="127.0.0.1", LOG_LEVEL="INFO")
    celery = [str(BIN / "celery"), "-A", "worker.app"]
    commands = {
        "api": [str(BIN / "gunicorn"), "-c", "python:api.gunicorn_conf", "-b",
                f"127.0.0.1:{api_port}", "-w", "2", "api.wsgi:app"],
        "validation": [*celery, "worker", "-P", "prefork", "-c", "2", "-Q", "uploads", "-n",
                       f"metrics-validation-{os.getpid()}@%h", "--loglevel", "INFO"],
        "io": [*celery, "worker", "-P", "threads", "-c", "4", "-Q",
               ",".join(q for q in ALL_QUEUES if q != "uploads"), "-n",
               f"metrics-io-{os.getpid()}@%h", "--loglevel", "INFO"],
        "beat": [*celery, "beat", "-s", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"],
    }
    api_base = f"http://127.0.0.1:{api_port}"
    started: dict[str, Group] = {}
    try:
        for name, command in commands.items():
            directory = tmp_path / f"prometheus-{name}"
            directory.mkdir()
            port = free_port()
            process = ManagedProcess(command, tmp_path / f"{name}.log", cwd=REPO, name=name, env={
                **env, "PROMETHEUS_MULTIPROC_DIR": str(directory), "METRICS_PORT": str(port)})
            started[name] = Group(process.start(), f"http://127.0.0.1:{port}/metrics")
        everyone_up = wait_until(lambda: all(ready(name, g, api_base) for name, g in started.items()),
                                 START_TIMEOUT, interval=0.3,
                                 abort=lambda: not all(g.process.alive() for g in started.values()))
        assert everyone_up, "\n".join(f"--- {name} ---\n{g.process.log_tail(30)}"
                                      for name, g in started.items())
        yield System(api_base, started)
    finally:
        with ThreadPoolExecutor(max_workers=len(commands)) as pool:  # stopped at once
            list(pool.map(lambda group: group.process.stop(), started.values()))
        redis.stop()


def ready(name: str, group: Group, api_base: str) -> bool:
    if name == "api" and httpx.get(f"{api_base}/readyz", timeout=2).status_code != 200:
        return False
    if name in ("validation", "io") and "ready." not in group.process.log_tail(200):
        return False
    return httpx.get(group.metrics_url, timeout=2).status_code == 200


def scrape_all(groups: dict[str, Group]) -> dict[str, dict[str, float]]:
    return {name: counts(scrape(group.metrics_url)) for name, group in groups.items()}


def upload_and_try_on(base: str, token: str) -> None:
    photo = fixture_bytes("astronaut.jpg")
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                      timeout=15) as api:
        issued = api.post("/v1/uploads/presign", json={
            "contentType": "image/jpeg", "contentLength": len(photo),
            "checksum": sha256_b64(photo)}).json()
        assert httpx.put(issued["uploadUrl"], content=photo, headers=issued["headers"],
                         timeout=15).status_code == 200
        assert api.post("/v1/uploads/confirm", json={"key": issued["key"]}).status_code == 202
        upload = poll(api, f"/v1/uploads/{issued['uploadId']}", ("ready", "rejected"))
        assert upload["status"] == "ready", upload
        started = api.post("/v1/try-ons", json={"uploadId": issued["uploadId"],
                                                "hairstyleId": "bob", "locale": "en"})
        assert started.status_code == 202, started.text
        job = poll(api, f"/v1/try-ons/{started.json()['jobId']}", ("succeeded", "failed"))
        assert job["status"] == "succeeded", job


def poll(api: httpx.Client, path: str, final: tuple[str, ...]) -> dict:
    deadline = time.monotonic() + FLOW_TIMEOUT
    while time.monotonic() < deadline:
        body = api.get(path).json()
        if body["status"] in final:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{path} still {body['status']} after {FLOW_TIMEOUT:.0f} s")


def test_every_group_serves_exactly_what_it_did(system, token):
    groups, api_base = system.groups, system.api_base
    before = scrape_all(groups)

    # The published port carries no metrics: they are on the API's METRICS_PORT.
    public = httpx.get(f"{api_base}/metrics", timeout=5)
    assert public.status_code == 404
    assert public.json()["error"]["code"] == "request.not_found"

    upload_and_try_on(api_base, token(USER))

    def deltas() -> dict[str, dict[str, float]]:
        return {name: moved(before[name], now) for name, now in scrape_all(groups).items()}

    # The last increments happen just after the job reads as succeeded (a task's
    # duration is observed as it returns): bounded wait, then nothing more may move.
    wait_until(lambda: deltas() == EXPECTED, 10, interval=0.2)
    time.sleep(0.5)
    assert deltas() == EXPECTED

    texts = {name: scrape(group.metrics_url) for name, group in groups.items()}
    for text in texts.values():  # observed durations, not just counts
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_sum") and sample.value:
                    assert sample.value > 0
    # No id or URL as a label, on any endpoint.
    for name, text in texts.items():
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for value in sample.labels.values():
                    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}|://|/", value), (
                        name, sample)
    # Queue lengths, read from the broker at scrape time, on the API's endpoint: the
    # flow left nothing waiting.
    api_text = texts["api"]
    assert "celery_queue_length_up 1.0" in api_text
    for queue in ALL_QUEUES:
        assert f'celery_queue_length{{queue="{queue}"}} 0.0' in api_text
