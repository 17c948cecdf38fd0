"""Queue lengths by queue (issue 16, point 3): read from the broker at scrape time,
on this machine's Redis, and never a failed scrape when the broker does not answer."""

from __future__ import annotations

import contextlib
import uuid

from celery import Celery
from kombu.exceptions import ChannelError

import api.health
from shared.core.task_names import ALL_QUEUES, QUEUES, VALIDATE_UPLOAD
from shared.core.tasks import queue_lengths, send
from tests.conftest import REDIS_URL

# A Redis database of this test's own: queue names are fixed, and kombu's
# `global_keyprefix` is not applied when it sizes a queue.
QUEUE_TEST_DB = 12


def isolated_app() -> Celery:
    app = Celery("queue-metrics-test", broker=REDIS_URL.rsplit("/", 1)[0] + f"/{QUEUE_TEST_DB}")
    app.conf.task_routes = {name: {"queue": queue} for name, queue in QUEUES.items()}
    return app


def purge(app: Celery) -> None:
    with app.connection_for_write() as conn:
        for queue in ALL_QUEUES:
            with contextlib.suppress(ChannelError):  # never declared: nothing in it
                conn.default_channel.queue_purge(queue)


def test_queue_lengths_count_what_waits_in_each_queue():
    app = isolated_app()
    purge(app)
    try:
        assert queue_lengths(app) == dict.fromkeys(ALL_QUEUES, 0)
        for _ in range(3):
            assert send(VALIDATE_UPLOAD, str(uuid.uuid4()), app=app)
        assert queue_lengths(app) == {**dict.fromkeys(ALL_QUEUES, 0), "uploads": 3}
    finally:
        purge(app)  # leave nothing behind


def test_metrics_carry_the_queue_lengths(client):
    body = client.get("/metrics").get_data(as_text=True)
    for queue in ALL_QUEUES:
        assert f'celery_queue_length{{queue="{queue}"}}' in body
    assert "celery_queue_length_up 1.0" in body


def test_a_broker_that_does_not_answer_leaves_the_scrape_whole(client, monkeypatch):
    def down() -> dict[str, int]:
        raise ConnectionError("broker down")

    monkeypatch.setattr(api.health, "queue_lengths", down)
    response = client.get("/metrics")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "celery_queue_length_up 0.0" in body and 'celery_queue_length{' not in body
    assert "api_errors_total" in body or "upload_issued_total" in body  # the rest is there
