"""The broker transport (shared/core/broker_transport.py) on the real Redis: messages
published and acknowledged as with kombu's own, without a Redis client built per
command."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

import celeryconfig
from shared.core.broker_transport import Transport, transport_for
from tests.conftest import REDIS_URL


def test_the_transport_is_named_for_plain_redis_only() -> None:
    assert transport_for("redis://127.0.0.1:6379/0") == "shared.core.broker_transport:Transport"
    # TLS set-up goes by kombu's scheme: kombu's transport; other brokers: theirs.
    assert transport_for("rediss://cache.example:6380/0") is None
    assert transport_for("amqp://guest@rabbit//") is None
    assert celeryconfig.broker_transport == transport_for(celeryconfig.broker_url)


def _clients_built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built: list[int] = []
    init = redis.Redis.__init__

    def counting(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting)
    return built


@pytest.mark.parametrize("transport", [Transport, None], ids=["ours", "kombu's"])
def test_publishes_and_acks_reuse_one_client(monkeypatch: pytest.MonkeyPatch,
                                             transport: type[Transport] | None) -> None:
    name = f"hf-test-transport-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    built = _clients_built(monkeypatch)
    received: list[Any] = []
    with Connection(REDIS_URL, transport=transport) as conn:
        try:
            producer = conn.Producer(serializer="json")
            producer.publish({"n": 0}, exchange=queue.exchange, routing_key=name,
                             declare=[queue])
            first = len(built)
            for n in range(1, 20):
                producer.publish({"n": n}, exchange=queue.exchange, routing_key=name)
            with conn.Consumer(queue, callbacks=[lambda body, message: (
                    received.append(body["n"]), message.ack())]):
                while len(received) < 20:
                    conn.drain_events(timeout=5)
            per_command = len(built) - first
        finally:
            queue(conn.default_channel).delete()
    assert sorted(received) == list(range(20))
    if transport is Transport:
        assert per_command == 0
    else:  # what the stock transport does, so the assertion above can fail
        assert per_command >= 19
