"""`Idempotency-Key` for POST /v1/try-ons: scoped to the user, kept 24 h, a replay
returns the original status and body; the same key with another body is 409.
`IdempotencyStore.once` is the whole protocol around one request.

Redis holds the record: first a `pending` marker taken with SET NX (so two
concurrent requests with one key create one job), then the response.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.core.errors import AppError
from shared.core.timeouts import bounded_redis

TTL_SECONDS = 24 * 3600
PENDING_TTL_SECONDS = 60
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]


def fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, redis_url: str, namespace: str = "hf", *,
                 redis_timeout: float = 2.0) -> None:
        self._redis = bounded_redis(redis_url, redis_timeout)  # REDIS_TIMEOUT_SECONDS
        self._namespace = namespace

    def _key(self, user_id: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self._namespace}:idem:{user_id}:{digest}"

    def once(self, user_id: str, key: str | None, request: dict[str, Any],
             respond: Callable[[str | None], Replay],
             replayable: Callable[[dict[str, Any]], dict[str, Any]] = dict) -> Replay:
        """Answer a request at most once per key: `respond(key)` runs only for a key
        not seen before (or without a key), and what `replayable` keeps of its answer
        is what a retry with the same key and body gets back. A request that failed
        releases its key, so the client may retry with it."""
        if not key:
            return respond(None)
        if len(key) > MAX_KEY_LENGTH:
            # Never truncated: two long keys sharing a prefix are two requests.
            raise AppError("request.invalid", detail="idempotency key too long")
        print_ = fingerprint(request)
        replay = self.begin(user_id, key, print_)
        if replay is not None:
            return replay
        try:
            answer = respond(key)
        except Exception:
            self.abandon(user_id, key)
            raise
        self.complete(user_id, key, print_, answer.status, replayable(answer.body))
        return answer

    def begin(self, user_id: str, key: str, print_: str) -> Replay | None:
        """None: go ahead (the key is now ours). A Replay: answer with it."""
        name = self._key(user_id, key)
        pending = json.dumps({"fingerprint": print_, "state": "pending"})
        if self._redis.set(name, pending, nx=True, ex=PENDING_TTL_SECONDS):
            return None
        raw: Any = self._redis.get(name)
        if raw is None:  # expired between the two calls: try once more
            return self.begin(user_id, key, print_)
        record = json.loads(raw)
        if record["fingerprint"] != print_:
            raise AppError("idempotency.conflict")
        if record["state"] == "pending":
            raise AppError("idempotency.in_progress", retry_after=1)
        return Replay(int(record["status"]), record["body"])

    def complete(self, user_id: str, key: str, print_: str, status: int,
                 body: dict[str, Any]) -> None:
        self._redis.set(self._key(user_id, key), json.dumps(
            {"fingerprint": print_, "state": "done", "status": status, "body": body},
            default=str), ex=TTL_SECONDS)

    def abandon(self, user_id: str, key: str) -> None:
        """The request failed: let the client retry with the same key."""
        self._redis.delete(self._key(user_id, key))

    def forget_user(self, user_id: str) -> int:
        """Every record of one user (erasure): replayed bodies name their jobs."""
        names = list(self._redis.scan_iter(match=f"{self._namespace}:idem:{user_id}:*", count=500))
        return int(self._redis.delete(*names)) if names else 0  # type: ignore[arg-type]
