"""Idempotency-Key semantics over fakeredis."""

from __future__ import annotations

import fakeredis
import pytest

from shared.access.idempotency import IdempotencyStore, fingerprint
from shared.core.errors import AppError


@pytest.fixture
def store(monkeypatch) -> IdempotencyStore:
    server = fakeredis.FakeServer()
    monkeypatch.setattr("redis.Redis.from_url",
                        lambda *a, **k: fakeredis.FakeRedis(server=server))
    return IdempotencyStore("redis://unused")


def test_first_use_then_replay(store):
    body = fingerprint({"hairstyleId": "bob"})
    assert store.begin("u1", "k", body) is None
    store.complete("u1", "k", body, 202, {"jobId": "j1"})
    replay = store.begin("u1", "k", body)
    assert replay is not None and (replay.status, replay.body) == (202, {"jobId": "j1"})
    assert store.begin("u2", "k", body) is None  # scoped to the user


def test_other_body_is_a_conflict_and_concurrent_use_waits(store):
    first, second = fingerprint({"a": 1}), fingerprint({"a": 2})
    assert store.begin("u1", "k", first) is None
    with pytest.raises(AppError) as pending:
        store.begin("u1", "k", first)
    assert pending.value.code == "idempotency.in_progress"
    store.complete("u1", "k", first, 202, {})
    with pytest.raises(AppError) as conflict:
        store.begin("u1", "k", second)
    assert conflict.value.code == "idempotency.conflict"


def test_abandoned_key_can_be_used_again(store):
    body = fingerprint({"a": 1})
    assert store.begin("u1", "k", body) is None
    store.abandon("u1", "k")
    assert store.begin("u1", "k", body) is None
