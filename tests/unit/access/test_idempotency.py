"""Idempotency-Key semantics over fakeredis."""

from __future__ import annotations

import fakeredis
import pytest

from shared.access.idempotency import (
    MAX_KEY_LENGTH,
    TTL_SECONDS,
    IdempotencyStore,
    Replay,
    fingerprint,
)
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


# --- the whole protocol: IdempotencyStore.once -------------------------------

@pytest.fixture
def swapped() -> IdempotencyStore:
    """A store as Services builds it, its Redis swapped for fakeredis."""
    store = IdempotencyStore("redis://127.0.0.1:1/0")  # never connected to
    store._redis = fakeredis.FakeRedis()
    return store


class Responder:
    def __init__(self, status: int = 202, fail: bool = False) -> None:
        self.keys: list[str | None] = []
        self.status, self.fail = status, fail

    def __call__(self, key: str | None) -> Replay:
        self.keys.append(key)
        if self.fail:
            raise RuntimeError("the request failed")
        return Replay(self.status, {"jobId": f"job-{len(self.keys)}", "url": "signed"})


def test_once_answers_a_key_once_and_replays_what_it_keeps(swapped):
    respond = Responder()
    keep = lambda body: {"jobId": body["jobId"]}  # noqa: E731 - signed URLs are not replayed
    first = swapped.once("u1", "k", {"hairstyleId": "bob"}, respond, keep)
    assert first == Replay(202, {"jobId": "job-1", "url": "signed"})
    again = swapped.once("u1", "k", {"hairstyleId": "bob"}, respond, keep)
    assert again == Replay(202, {"jobId": "job-1"})
    assert respond.keys == ["k"]
    with pytest.raises(AppError) as conflict:
        swapped.once("u1", "k", {"hairstyleId": "pixie-cut"}, respond, keep)
    assert conflict.value.code == "idempotency.conflict"
    swapped.once("u2", "k", {"hairstyleId": "bob"}, respond, keep)  # another user's key
    assert respond.keys == ["k", "k"]


def test_once_without_a_key_always_answers(swapped):
    respond = Responder()
    swapped.once("u1", None, {}, respond)
    swapped.once("u1", "", {}, respond)
    assert respond.keys == [None, None]


def test_a_failed_request_releases_its_key(swapped):
    with pytest.raises(RuntimeError):
        swapped.once("u1", "k", {"a": 1}, Responder(fail=True))
    respond = Responder()
    assert swapped.once("u1", "k", {"a": 1}, respond).status == 202
    assert respond.keys == ["k"]


def test_keys_are_never_cut_to_their_maximum_length(swapped):
    """Two keys sharing their first 255 characters are two requests: a longer key is
    refused (the API refuses it first, naming the header), never truncated."""
    respond = Responder()
    prefix = "k" * MAX_KEY_LENGTH
    with pytest.raises(AppError) as refused:
        swapped.once("u1", prefix + "-one", {"a": 1}, respond)
    assert refused.value.code == "request.invalid"
    swapped.once("u1", prefix, {"a": 1}, respond)
    assert respond.keys == [prefix]


def test_records_expire_and_an_erasure_forgets_a_user_s(swapped):
    respond = Responder()
    swapped.once("u1", "a", {}, respond)
    swapped.once("u1", "b", {}, respond)
    swapped.once("u10", "a", {}, respond)  # a user whose id starts with u1's
    names = sorted(swapped._redis.keys("hf:idem:*"))
    assert all(0 < swapped._redis.ttl(name) <= TTL_SECONDS for name in names)
    assert swapped.forget_user("u1") == 2
    assert swapped.forget_user("u1") == 0
    assert [n.decode().split(":")[2] for n in swapped._redis.keys("hf:idem:*")] == ["u10"]
    swapped.once("u1", "a", {}, respond)
    assert respond.keys == ["a", "b", "a", "a"]
