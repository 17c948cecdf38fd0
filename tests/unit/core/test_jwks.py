"""JwksCache (shared/core/jwks.py): its refresh policy, on a scripted fetch and clock."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.core.jwks import JwksCache, KeysUnavailable


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


def cache_for(source: Source) -> tuple[JwksCache, Clock]:
    clock = Clock()
    return JwksCache("https://auth/jwks", max_age=300, min_refetch=60, fetch=source,
                     clock=clock), clock


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
    source = Source("a")
    cache, clock = cache_for(source)
    cache.keys()
    for _ in range(10):
        assert cache.key_for("unknown") is None
    assert source.calls == 1
    clock.now = 60
    source.keys.append(okp("new"))
    assert cache.key_for("new") is not None and source.calls == 2


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
