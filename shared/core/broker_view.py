"""What the broker holds for our tasks, read without taking anything.

The reconcilers use it to tell work that is merely waiting in a healthy queue from
work whose message is gone. With the Redis transport (kombu), a message is in one
of two places until it is acknowledged:

- waiting: in its queue's list (one list per priority step);
- held by a worker: in the `unacked` hash, with the time it was taken in
  `unacked_index`. A task with an ETA (a countdown) is held from delivery until it
  runs; any other is held only while its worker runs it or has it prefetched.

A message held for longer than `held_for` (10 s) past its ETA (or its delivery,
without one) belongs to a worker that died with it (a live one runs what it holds
at once: its prefetch is its concurrency; a longer run has claimed its row). Redis
would hand it back only after the visibility timeout (an hour), so it counts as gone.
Anything not found is gone too: never sent (the broker was down), or lost (Redis
restarted empty).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import defaultdict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import redis

from shared.core.timeouts import bounded_redis

log = logging.getLogger(__name__)

# kombu's Redis transport: the hash and sorted set of unacknowledged messages, and
# the suffixes of its priority lists (PRIORITY_STEPS 0, 3, 6, 9 after the name).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
# Read in pages; a backlog beyond this is not scanned further (logged).
PAGE = 2_000
MAX_SCANNED = 200_000

Pending = dict[str, set[str]]  # task name -> the first argument (a job or upload id) of each


class BrokerUnreadable(Exception):
    """The broker could not be read: the caller falls back to re-sending by age."""


@dataclass(frozen=True)
class RedisBrokerView:
    url: str
    budget_seconds: float
    held_for: float = 10.0

    def pending(self, queues: Collection[str], tasks: Collection[str]) -> Pending:
        """The messages of `tasks` waiting in `queues` or held by a live worker."""
        found: Pending = defaultdict(set)
        try:
            client = bounded_redis(self.url, self.budget_seconds)
            for raw in self._waiting(client, queues):
                _add(found, raw, tasks)
            for raw in self._held(client, time.time()):
                _add(found, raw, tasks)
        except redis.RedisError as exc:
            raise BrokerUnreadable(type(exc).__name__) from exc
        return found

    def _waiting(self, client: redis.Redis, queues: Collection[str]) -> Iterator[Any]:
        scanned = 0
        for queue in queues:
            for key in (queue, *(f"{queue}{PRIORITY_SEPARATOR}{p}" for p in PRIORITY_STEPS)):
                start = 0
                while scanned < MAX_SCANNED:
                    page = cast("list[bytes]", client.lrange(key, start, start + PAGE - 1))
                    yield from page
                    scanned += len(page)
                    if len(page) < PAGE:
                        break
                    start += PAGE
        if scanned >= MAX_SCANNED:
            log.warning("broker backlog beyond %d messages: the rest was not scanned", MAX_SCANNED)

    def _held(self, client: redis.Redis, now: float) -> Iterator[Any]:
        taken_at = dict(cast("list[tuple[bytes, float]]",
                             client.zrange(UNACKED_INDEX, 0, -1, withscores=True)))
        for tag, entry in client.hscan_iter(UNACKED, count=PAGE):
            try:
                message = json.loads(entry)[0]
            except (ValueError, TypeError, IndexError, KeyError):
                continue
            since = _eta(message) or taken_at.get(tag, now)
            if now - since <= self.held_for:
                yield message


def _eta(message: Any) -> float | None:
    try:
        eta = message["headers"].get("eta")
        return datetime.fromisoformat(eta).timestamp() if eta else None
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _add(found: Pending, raw: Any, tasks: Collection[str]) -> None:
    """Record the message's task and first argument, if it is one of `tasks`; a
    message that is not ours or not readable is skipped."""
    try:
        message = json.loads(raw) if isinstance(raw, bytes | str) else raw
        task = message["headers"]["task"]
        if task not in tasks:
            return
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        if args:
            found[task].add(str(args[0]))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return
