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
- every fetch ends within `fetch_timeout` seconds of wall-clock time from its start,
  whatever the server does (DNS, connect, TLS, a trickled answer): the caller stops
  waiting then and the attempt counts as failed;
- while fetches fail, the last good set keeps working; with none ever fetched,
  `KeysUnavailable` (the API answers 503, retriable: the app keeps its session).

Key rotation (`key_for`): a token naming a `kid` the cached set lacks may be signed
with a key the auth server has just rotated in. Its request does not wait: it starts
a background fetch (one at a time, and not before `min_refetch` has passed since the
last attempt) and gets `KeysUnavailable` with a short `retry_after` until a fetch
*begun after the kid was first seen* has completed. If that set has the kid, the
token verifies; if it lacks it, the key is unknown (the API answers 401). Which kids
were seen when is kept for the last `TRACKED_KIDS` of them, by digest, so random kids
cost bounded memory and at most one fetch per `min_refetch`.

PyJWK/PyJWKSet (PyJWT) parse the keys; httpx fetches them without following
redirects (a moved JWKS is a configuration error to fix, not to follow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)

# Default bound of one fetch, from its start to its end (the auth server's comes from
# Settings.jwt_jwks_fetch_timeout_seconds).
FETCH_TIMEOUT_SECONDS = 5.0
# A key set is a few kilobytes; a bigger answer is not one.
MAX_JWKS_BYTES = 256 * 1024
# How many unknown kids we remember the first sighting of (digests, ~100 bytes each).
TRACKED_KIDS = 1024
# Retry-After while no key set has ever been fetched (the JWKS is down).
NO_KEYS_RETRY_AFTER = 30


class KeysUnavailable(Exception):
    """No key set could be fetched (and none is cached), or none fetched yet that can
    say whether a token's key exists; `retry_after` is when asking again makes sense."""

    def __init__(self, url: str, retry_after: int = NO_KEYS_RETRY_AFTER) -> None:
        super().__init__(url)
        self.url = url
        self.retry_after = retry_after


Fetch = Callable[[str], dict[str, Any]]


def http_fetch(url: str, timeout: float = FETCH_TIMEOUT_SECONDS) -> dict[str, Any]:
    """GET a JWKS document. httpx's timeouts apply per phase and per read, so the body
    is also read against a deadline (the caller's wall-clock bound is JwksCache's)."""
    deadline = time.monotonic() + timeout
    body = bytearray()
    with httpx.stream("GET", url, timeout=timeout, follow_redirects=False) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("a JWKS this large is not one")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("JWKS answer too slow")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("a JWKS is a JSON object")
    return document


def _start_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="jwks-refresh", daemon=True).start()


class JwksCache:
    def __init__(self, url: str, *, max_age: float = 300.0, min_refetch: float = 60.0,
                 fetch_timeout: float = FETCH_TIMEOUT_SECONDS, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 spawn: Callable[[Callable[[], None]], None] = _start_thread) -> None:
        self.url = url
        self.max_age, self.min_refetch, self.fetch_timeout = max_age, min_refetch, fetch_timeout
        self._fetch: Fetch = fetch or (lambda u: http_fetch(u, timeout=fetch_timeout))
        self._clock, self._sleep, self._spawn = clock, sleep, spawn
        # The keys with the number of the attempt that fetched them, swapped as one
        # value so a reader never pairs a new set with an old attempt number.
        self._set: tuple[list[jwt.PyJWK], int] | None = None
        self._fetched_at = float("-inf")  # the last successful fetch
        self._tried_at = float("-inf")  # the last attempt, successful or not
        self._attempts = 0  # attempts begun so far (numbers them)
        self._last_failed = 0  # the number of the last attempt that failed
        self._lock = threading.Lock()  # held by the one fetching
        self._worker: threading.Thread | None = None  # the last fetch's thread
        self._book = threading.Lock()  # guards _seen, _wanted, _refresh_pending; held briefly
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # kid digest -> attempts before
        self._wanted = 0  # a fetch numbered above this is asked for
        self._refresh_pending = False  # a background thread is on it
        self.fetches = 0

    def keys(self, *, refresh: bool = False) -> list[jwt.PyJWK]:
        """The current keys; `refresh` asks for a fetch (granted at most once per
        `min_refetch`). KeysUnavailable if there are none at all."""
        now = self._clock()
        due = self._set is None or now - self._fetched_at >= self.max_age or refresh
        if due and now - self._tried_at >= self.min_refetch and self._lock.acquire(blocking=False):
            try:
                self._refresh(now)
            finally:
                self._lock.release()
        current = self._set
        if current is None:
            raise KeysUnavailable(self.url)
        return current[0]

    @property
    def last_fetch_failed(self) -> bool:
        return self._tried_at > self._fetched_at

    def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        """The key a token names, or None once a fetch begun after this kid was first
        seen lacks it. Until such a fetch has completed, KeysUnavailable with a short
        `retry_after` (a background fetch is on its way; nobody waits for it)."""
        attempts_before = self._attempts  # a fetch numbered above this began after now
        self.keys()  # the first set, or a refresh due by age
        current = self._set
        assert current is not None  # keys() raised otherwise
        keys, fetched_by = current
        if kid is None:  # no kid: only a set of one key says which key is meant
            return keys[0] if len(keys) == 1 else None
        for key in keys:
            if key.key_id == kid:
                return key
        seen = self._first_seen(kid, attempts_before)
        if fetched_by > seen:
            return None  # a set fetched after this kid was first seen lacks it
        # A fetch after it was seen, and after the last one that failed (if any).
        self._refresh_soon(max(seen, self._last_failed))
        raise KeysUnavailable(self.url, retry_after=self._retry_after())

    def _first_seen(self, kid: str, attempts_before: int) -> int:
        # A digest: kids are the client's text, up to a token's size, maybe not UTF-8.
        ident = hashlib.sha256(kid.encode("utf-8", "surrogatepass")).digest()
        with self._book:
            seen = self._seen.get(ident)
            if seen is None:
                seen = self._seen[ident] = attempts_before
                if len(self._seen) > TRACKED_KIDS:
                    self._seen.popitem(last=False)  # forgotten: seen anew next time
            return seen

    def _refresh_soon(self, seen: int) -> None:
        """A background fetch numbered above `seen`, as soon as the rate limit allows;
        one thread at a time does every fetch asked for."""
        with self._book:
            self._wanted = max(self._wanted, seen)
            if self._refresh_pending:
                return
            self._refresh_pending = True
        try:
            self._spawn(self._refresh_in_background)
        except RuntimeError:  # no thread to be had (interpreter shutting down)
            with self._book:
                self._refresh_pending = False

    def _refresh_in_background(self) -> None:
        try:
            while True:
                with self._book:  # checked and cleared together with `_wanted`'s updates
                    if self._attempts > self._wanted:
                        self._refresh_pending = False
                        return
                wait = self._tried_at + self.min_refetch - self._clock()
                if wait > 0:
                    self._sleep(wait)
                elif self._lock.acquire(blocking=False):
                    try:
                        if self._attempts <= self._wanted:
                            self._refresh(self._clock())
                    finally:
                        self._lock.release()
                else:
                    self._sleep(0.05)  # another fetch is under way: see what it began after
        except BaseException:
            with self._book:
                self._refresh_pending = False
            raise

    def _retry_after(self) -> int:
        if self._lock.locked():
            return 1  # a fetch is under way: it ends within fetch_timeout
        next_attempt = self._tried_at + self.min_refetch - self._clock()
        return 1 + math.ceil(max(0.0, next_attempt))

    def _refresh(self, now: float) -> None:
        self._tried_at = now
        self._attempts += 1
        attempt = self._attempts
        self.fetches += 1
        try:
            keys = jwt.PyJWKSet.from_dict(self._fetch_within_bound()).keys
        except Exception as exc:  # noqa: BLE001 - whatever the failure, the attempt failed
            # PyJWKSetError too: a set with no usable key is no better than none.
            log.warning("JWKS fetch failed (%s); %s", type(exc).__name__,
                        "keeping the last good set" if self._set else "no keys yet")
            self._last_failed = attempt
            return
        self._set, self._fetched_at = (keys, attempt), now

    def _fetch_within_bound(self) -> dict[str, Any]:
        """The document, or an exception within `fetch_timeout` seconds. The fetch runs
        in its own thread so that DNS and a trickling server are bounded too; a thread
        still running after its bound blocks new attempts (never more than one)."""
        if self._worker is not None and self._worker.is_alive():
            raise TimeoutError("the previous JWKS fetch is still running")
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["document"] = self._fetch(self.url)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                outcome["error"] = exc

        self._worker = threading.Thread(target=run, name="jwks-fetch", daemon=True)
        self._worker.start()
        self._worker.join(self.fetch_timeout)
        if self._worker.is_alive():
            raise TimeoutError(f"JWKS fetch exceeded {self.fetch_timeout} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["document"]
