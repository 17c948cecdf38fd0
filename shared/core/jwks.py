"""A JSON Web Key Set fetched and kept by us, with a refresh policy we own.

Used for the app's auth server (user tokens) and for fal (webhook signatures).
PyJWT's PyJWKClient is not used for fetching: it keeps keys forever with
`cache_keys=True`, rate-limits refetches only after a success, and holds its lock
through a fetch, so while a JWKS is unreachable every request naming an unknown
key waits for one. Here:

- the set is kept `max_age` seconds, then fetched again; a key removed from the
  set stops working at the first successful fetch after that;
- a fetch is tried at most once per `min_refetch` seconds, success or failure,
  whatever the requests ask for (an unknown `kid` cannot make us hammer the JWKS);
- one request fetches, the others go on with what is cached;
- while fetches fail, the last good set keeps working; with none ever fetched,
  `KeysUnavailable` (the API answers 503, retriable: the app keeps its session).

PyJWK/PyJWKSet (PyJWT) parse the keys; httpx fetches them without following
redirects (a moved JWKS is a configuration error to fix, not to follow).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)


class KeysUnavailable(Exception):
    """No key set could be fetched (and none is cached)."""


Fetch = Callable[[str], dict[str, Any]]


def http_fetch(url: str) -> dict[str, Any]:
    response = httpx.get(url, timeout=5.0, follow_redirects=False)
    response.raise_for_status()
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError("a JWKS is a JSON object")
    return body


class JwksCache:
    def __init__(self, url: str, *, max_age: float = 300.0, min_refetch: float = 60.0,
                 fetch: Fetch = http_fetch, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.max_age, self.min_refetch = max_age, min_refetch
        self._fetch, self._clock = fetch, clock
        self._keys: list[jwt.PyJWK] | None = None
        self._fetched_at = float("-inf")  # the last successful fetch
        self._tried_at = float("-inf")  # the last attempt, successful or not
        self._lock = threading.Lock()
        self.fetches = 0

    def keys(self, *, refresh: bool = False) -> list[jwt.PyJWK]:
        """The current keys; `refresh` asks for a fetch (granted at most once per
        `min_refetch`). KeysUnavailable if there are none at all."""
        now = self._clock()
        due = self._keys is None or now - self._fetched_at >= self.max_age or refresh
        if due and now - self._tried_at >= self.min_refetch and self._lock.acquire(blocking=False):
            try:
                self._refresh(now)
            finally:
                self._lock.release()
        if self._keys is None:
            raise KeysUnavailable(self.url)
        return self._keys

    @property
    def last_fetch_failed(self) -> bool:
        return self._tried_at > self._fetched_at

    def _refresh(self, now: float) -> None:
        self._tried_at = now
        self.fetches += 1
        try:
            keys = jwt.PyJWKSet.from_dict(self._fetch(self.url)).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            # PyJWKSetError too: a set with no usable key is no better than none.
            log.warning("JWKS fetch failed (%s); %s", type(exc).__name__,
                        "keeping the last good set" if self._keys else "no keys yet")
            return
        self._keys, self._fetched_at = keys, now

    def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        """The key a token names; an unknown kid asks for one refetch (rate-limited)."""
        for refresh in (False, True):
            keys = self.keys(refresh=refresh)
            matching = [k for k in keys if k.key_id == kid] if kid else (
                keys if len(keys) == 1 else [])
            if matching:
                return matching[0]
        return None
