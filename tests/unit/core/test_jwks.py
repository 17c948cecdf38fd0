"""JwksCache (shared/core/jwks.py): its refresh policy, on a scripted fetch and clock;
background refreshes are collected and run by the test, so it sees what each request
saw. The wall-clock bound of a fetch against real sockets (a black hole, a trickle)."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.core.jwks import TRACKED_KIDS, JwksCache, KeysUnavailable


def okp(kid: str) -> dict[str, str]:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": base64.urlsafe_b64encode(raw).decode().rstrip("=")}


class Source:
    def __init__(self, *kids: str) -> None:
        self.keys = [okp(k) for k in kids]
        self.failure: Exception | None = None
        self.calls = 0

    def __call__(self, url: str) -> dict[str, Any]:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return {"keys": self.keys}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __init__(self) -> None:
        self.sleeps: list[float] = []


class Background:
    """Stands in for the cache's thread starter: jobs wait until the test runs them."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], None]] = []

    def __call__(self, job: Callable[[], None]) -> None:
        self.jobs.append(job)

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job()


def cache_for(source: Source, min_refetch: float = 60,
              background: Background | None = None) -> tuple[JwksCache, Clock]:
    clock = Clock()
    return JwksCache("https://auth/jwks", max_age=300, min_refetch=min_refetch, fetch=source,
                     clock=clock, sleep=clock.sleep, spawn=background or Background()), clock


def kids(cache: JwksCache, **kw: bool) -> list[str | None]:
    return [k.key_id for k in cache.keys(**kw)]


def test_kept_for_max_age_then_fetched_again():
    source = Source("a")
    cache, clock = cache_for(source)
    assert kids(cache) == ["a"] and source.calls == 1
    clock.now = 299
    source.keys = [okp("b")]
    assert kids(cache) == ["a"] and source.calls == 1
    clock.now = 300
    assert kids(cache) == ["b"] and source.calls == 2  # a removed key stops working


def test_refetches_are_rate_limited_whatever_is_asked():
    source, background = Source("a"), Background()
    cache, clock = cache_for(source, background=background)
    cache.keys()
    for n in range(10):
        with pytest.raises(KeysUnavailable):
            cache.key_for(f"unknown-{n}")
        cache.keys(refresh=True)
    assert source.calls == 1 and len(background.jobs) == 1  # one refresh, waiting its turn
    source.keys.append(okp("new"))
    background.run()  # sleeps out the minute since the first fetch, then fetches once
    assert clock.sleeps == [60] and source.calls == 2
    assert cache.key_for("new") is not None
    for n in range(10):  # the set fetched after they were seen lacks them: unknown
        assert cache.key_for(f"unknown-{n}") is None
    assert source.calls == 2 and not background.jobs


def rotated() -> tuple[JwksCache, Clock, Source, Background]:
    """A cache holding the set of key "old"; the auth server then rotates in "new"."""
    source, background = Source("old"), Background()
    cache, clock = cache_for(source, min_refetch=5, background=background)
    assert cache.key_for("old") is not None
    clock.now = 100  # the last fetch long past the minimum interval
    source.keys.append(okp("new"))
    return cache, clock, source, background


def test_a_kid_just_rotated_in_is_unavailable_until_a_background_fetch_has_it():
    cache, clock, source, background = rotated()
    with pytest.raises(KeysUnavailable) as unavailable:
        cache.key_for("new")
    assert unavailable.value.retry_after == 1  # a fetch starts at once
    assert source.calls == 1  # nobody waited for it: it runs in the background
    with pytest.raises(KeysUnavailable):  # and asking again starts no second one
        cache.key_for("new")
    assert len(background.jobs) == 1
    background.run()
    assert source.calls == 2 and clock.sleeps == []
    assert cache.key_for("new").key_id == "new"  # type: ignore[union-attr]
    assert cache.key_for("old") is not None  # the set's other keys still work


def test_a_kid_the_fetch_after_its_first_sighting_lacks_is_unknown():
    cache, clock, source, background = rotated()
    with pytest.raises(KeysUnavailable):
        cache.key_for("forged")
    background.run()
    assert cache.key_for("forged") is None
    assert source.calls == 2 and not background.jobs  # an unknown kid now costs nothing


def test_right_after_a_fetch_the_next_one_waits_its_turn_and_retry_after_says_so():
    cache, clock, source, background = rotated()
    cache.keys(refresh=True)  # a fetch at t=100, before "late" was seen
    clock.now = 102
    source.keys.append(okp("late"))
    with pytest.raises(KeysUnavailable) as unavailable:
        cache.key_for("late")
    assert unavailable.value.retry_after == 1 + 3  # 3 s to the next attempt, then the fetch
    background.run()
    assert clock.sleeps == [3] and source.calls == 3
    assert cache.key_for("late") is not None


def test_a_failed_background_fetch_leaves_the_kid_unavailable_and_a_retry_asks_again():
    cache, clock, source, background = rotated()
    source.failure = httpx.ConnectError("down")
    with pytest.raises(KeysUnavailable):
        cache.key_for("new")
    background.run()
    assert source.calls == 2
    with pytest.raises(KeysUnavailable) as unavailable:  # not 401: nothing said it is absent
        cache.key_for("new")
    assert unavailable.value.retry_after == 1 + 5
    source.failure = None
    background.run()  # waits out the interval after the failed attempt
    assert source.calls == 3 and clock.sleeps == [5]
    assert cache.key_for("new") is not None


def test_a_refresh_due_by_age_in_the_request_decides_at_once():
    cache, clock, source, background = rotated()
    clock.now = 400  # past max_age: this request fetches (the first set's way), so
    assert cache.key_for("absent") is None  # the set it sees was fetched after the kid
    assert cache.key_for("new") is not None
    assert source.calls == 2 and not background.jobs


def test_random_kids_cost_one_fetch_per_interval_and_bounded_memory():
    cache, clock, source, background = rotated()
    for n in range(3 * TRACKED_KIDS):
        with pytest.raises(KeysUnavailable):
            cache.key_for(f"random-{n}-" + "x" * 1000)
    assert len(cache._seen) == TRACKED_KIDS  # digests only, the oldest forgotten
    assert len(background.jobs) == 1 and source.calls == 1
    background.run()
    clock.now += 1
    for n in range(100):  # new ones after the fetch: one more, a whole interval later
        with pytest.raises(KeysUnavailable):
            cache.key_for(f"later-{n}")
    background.run()
    assert source.calls == 3 and clock.sleeps == [4]
    with pytest.raises(KeysUnavailable):  # a kid that is not text Python can encode
        cache.key_for("\ud800")


def test_a_failing_fetch_keeps_the_last_good_set():
    source = Source("a")
    cache, clock = cache_for(source)
    cache.keys()
    source.failure = httpx.ConnectError("down")
    clock.now = 400
    assert kids(cache) == ["a"] and cache.last_fetch_failed
    clock.now = 500
    source.failure = None
    assert kids(cache) == ["a"] and not cache.last_fetch_failed


def test_with_no_set_ever_fetched_the_keys_are_unavailable():
    source = Source("a")
    source.failure = ValueError("not json")
    cache, clock = cache_for(source)
    with pytest.raises(KeysUnavailable):
        cache.keys()
    with pytest.raises(KeysUnavailable):
        cache.keys(refresh=True)
    assert source.calls == 1
    clock.now = 60
    source.failure = None
    assert kids(cache) == ["a"]


def test_a_token_without_kid_matches_only_a_single_key_set():
    source = Source("a")
    cache, _ = cache_for(source)
    assert cache.key_for(None) is not None
    source.keys = [okp("a"), okp("b")]
    two, _ = cache_for(source)
    assert two.key_for(None) is None
    assert two.key_for("b").key_id == "b"  # type: ignore[union-attr]


def test_a_token_without_kid_starts_no_fetch():
    source, background = Source("a", "b"), Background()
    cache, _ = cache_for(source, min_refetch=5, background=background)
    assert cache.key_for(None) is None
    assert source.calls == 1 and not background.jobs


@pytest.fixture
def silent_server() -> Iterator[tuple[str, Callable[[socket.socket], None]]]:
    """A TCP server whose behaviour each test sets: it accepts, then does what it is told."""
    behaviour: list[Callable[[socket.socket], None]] = []
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=behaviour[0], args=(conn,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/jwks", behaviour.append
    stop.set()
    server.join()
    listener.close()


def _black_hole(conn: socket.socket) -> None:
    time.sleep(3)  # accepts, reads nothing, answers nothing
    conn.close()


def _trickle(conn: socket.socket) -> None:
    conn.recv(4096)
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        for _ in range(100):  # a byte every 0.1 s: no single read ever times out
            conn.sendall(b" ")
            time.sleep(0.1)
    except OSError:
        pass
    conn.close()


@pytest.mark.parametrize("behaviour", [_black_hole, _trickle], ids=["black hole", "trickle"])
def test_a_fetch_ends_within_its_wall_clock_bound_whatever_the_server_does(silent_server,
                                                                           behaviour):
    url, set_behaviour = silent_server
    set_behaviour(behaviour)
    cache = JwksCache(url, min_refetch=0.0, fetch_timeout=1.0)
    for _ in range(2):  # the first set, then a refresh: each bounded, each a failed attempt
        started = time.monotonic()
        with pytest.raises(KeysUnavailable):
            cache.keys(refresh=True)
        assert time.monotonic() - started < 1.5
    assert cache.fetches == 2 and cache.last_fetch_failed


def test_a_fetch_still_running_past_its_bound_blocks_new_attempts():
    release = threading.Event()

    def hung(url: str) -> dict[str, Any]:
        release.wait(10)  # a resolver that never answers: no socket timeout applies
        return {"keys": [okp("a")]}

    cache = JwksCache("https://auth/jwks", min_refetch=0.0, fetch_timeout=0.2, fetch=hung)
    for _ in range(5):
        started = time.monotonic()
        with pytest.raises(KeysUnavailable):
            cache.keys(refresh=True)
        assert time.monotonic() - started < 0.5
    assert sum(t.name == "jwks-fetch" for t in threading.enumerate()) == 1
    release.set()
    time.sleep(0.05)
    assert [k.key_id for k in cache.keys(refresh=True)] == ["a"]
