"""What the reconcilers see of the broker (shared/core/broker_view.py), read from this
machine's Redis with real Celery messages: a message waiting in its queue, one a
live worker holds, one held past the grace (its worker died), one with an ETA, and
a broker that does not answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from devstack.procs import free_port
from shared.core.broker_view import BrokerUnreadable, RedisBrokerView
from shared.core.task_names import COMPLETE_TRYON, QUEUES, RUN_TRYON
from shared.core.tasks import send
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.integration

# A Redis database of this test's own: kombu's queue and `unacked` keys have fixed names.
BROKER_VIEW_DB = 13
BROKER_URL = REDIS_URL.rsplit("/", 1)[0] + f"/{BROKER_VIEW_DB}"
TASKS = (RUN_TRYON, COMPLETE_TRYON)


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("broker-view-test", broker=BROKER_URL)
    app.conf.task_routes = {name: {"queue": queue} for name, queue in QUEUES.items()}
    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield app
    client.flushdb()


def view(held_for: float = 30.0) -> RedisBrokerView:
    return RedisBrokerView(BROKER_URL, 2.0, held_for=held_for)


def test_waiting_messages_are_seen_by_task_and_first_argument(app: Celery):
    assert send(RUN_TRYON, "job-a", app=app)
    assert send(RUN_TRYON, "job-b", app=app)
    assert send(COMPLETE_TRYON, "job-c", 1, {"status": "OK"}, app=app)
    assert send("uploads.validate", "upload-d", app=app)  # not asked for
    pending = view().pending(["tryons", "tryons_done"], TASKS)
    assert pending == {RUN_TRYON: {"job-a", "job-b"}, COMPLETE_TRYON: {"job-c"}}


def test_a_held_message_counts_while_its_worker_lives_and_not_after(app: Celery):
    assert send(RUN_TRYON, "job-held", app=app)
    with app.connection_for_read() as conn:
        # A consumer that takes the message and does not acknowledge it, as a worker
        # running it (or holding it prefetched) does: kombu moves it to `unacked`.
        queue = conn.SimpleQueue("tryons", no_ack=False)
        message = queue.get(timeout=5)
        assert message.payload is not None
        client = redis.Redis.from_url(BROKER_URL)
        assert client.llen("tryons") == 0 and client.hlen("unacked") == 1
        assert view().pending(["tryons"], TASKS) == {RUN_TRYON: {"job-held"}}
        time.sleep(0.2)
        # Held longer than the grace: its worker died with it (Redis would restore
        # it only after the visibility timeout), so it counts as gone.
        assert view(held_for=0.1).pending(["tryons"], TASKS) == {}
        queue.close()


def test_a_message_with_an_eta_is_held_until_its_eta(app: Celery):
    assert send(RUN_TRYON, "job-later", countdown=600, app=app)
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("tryons", no_ack=False)
        queue.get(timeout=5)
        time.sleep(0.2)
        # held for longer than the grace, but its ETA is ten minutes away
        assert view(held_for=0.1).pending(["tryons"], TASKS) == {RUN_TRYON: {"job-later"}}
        queue.close()


def test_a_broker_that_does_not_answer_is_unreadable_within_its_budget():
    started = time.monotonic()
    with pytest.raises(BrokerUnreadable):
        RedisBrokerView(f"redis://127.0.0.1:{free_port()}/0", 1.0).pending(["tryons"], TASKS)
    assert time.monotonic() - started < 2
