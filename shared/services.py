"""The dependencies domain functions receive, built once per process.

The composition root of `shared`: it sits above the packages whose parts it holds
(storage, fal, access, images) and below the domains that use it (uploads,
tryons, privacy). Domain code reaches storage only through the bound stores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import cached_property

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from shared.access.idempotency import IdempotencyStore
from shared.core.broker_view import BrokerUnreadable, Pending, RedisBrokerView
from shared.core.clock import Clock, utcnow
from shared.core.config import Settings
from shared.core.db import make_engine, make_session_factory
from shared.core.task_names import DEFAULT_QUEUE, QUEUES
from shared.core.tasks import send
from shared.fal.gateway import FalClientGateway, FalGateway
from shared.images.scanners import Scanner, ScannerUnavailable, build_scanners
from shared.storage.base import BucketStore, ObjectStorage, StorageUnavailable
from shared.storage.s3 import S3Storage

log = logging.getLogger(__name__)

# What a dependency raises while it is down and comes back from: tasks retry these
# (worker/base.py), and a validation gives its crash count back for them
# (shared/uploads/validation.py). A pool timeout is one too: every connection of the
# process was busy for DB_POOL_TIMEOUT_SECONDS, which passes.
DEPENDENCY_FAILURES: tuple[type[BaseException], ...] = (
    StorageUnavailable, ScannerUnavailable, ConnectionError, TimeoutError, OperationalError,
    InterfaceError, PoolTimeoutError, RedisConnectionError, RedisTimeoutError)

Dispatcher = Callable[..., bool]


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: ObjectStorage
    clock: Clock = utcnow
    dispatch: Dispatcher = field(default=send)
    # What the broker holds (the reconcilers leave waiting work alone); None where it
    # cannot be read, and then they re-send by age alone.
    broker: RedisBrokerView | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        engine = make_engine(settings.database_url,
                             connect_timeout=settings.db_connect_timeout_seconds,
                             pool_timeout=settings.db_pool_timeout_seconds,
                             statement_timeout=settings.db_statement_timeout_seconds)
        broker_url = settings.celery_broker_url
        broker = RedisBrokerView(broker_url, settings.broker_timeout_seconds) \
            if broker_url.startswith(("redis://", "rediss://")) else None
        return cls(settings=settings, engine=engine, sessions=make_session_factory(engine),
                   storage=S3Storage(settings), broker=broker)

    def messages_in_broker(self, tasks: Collection[str]) -> Pending | None:
        """The messages of these tasks waiting in their queues or held by a live
        worker, by task; None where the broker cannot be read (callers go by age)."""
        if self.broker is None:
            return None
        queues = dict.fromkeys(QUEUES.get(task, DEFAULT_QUEUE) for task in tasks)
        try:
            return self.broker.pending(queues, tasks)
        except BrokerUnreadable as exc:
            log.warning("broker unreadable (%s): re-sending by age alone", exc)
            return None

    # Properties, not fields: they follow `storage` and `settings` if a test swaps them.
    @property
    def upload_store(self) -> BucketStore:
        """Raw uploads and sanitized selfies (the private uploads bucket)."""
        return BucketStore(self.storage, self.settings.uploads_bucket)

    @property
    def result_store(self) -> BucketStore:
        """Try-on results and thumbnails (the private processed bucket)."""
        return BucketStore(self.storage, self.settings.processed_bucket)

    @cached_property
    def fal(self) -> FalGateway:
        return FalClientGateway(self.settings)

    @cached_property
    def idempotency(self) -> IdempotencyStore:
        """Idempotency-Key records (the API replays them; an erasure forgets them)."""
        return IdempotencyStore(self.settings.redis_url,
                                redis_timeout=self.settings.redis_timeout_seconds)

    @cached_property
    def scanners(self) -> list[Scanner]:
        s = self.settings
        return list(build_scanners(face_enabled=s.face_detection,
                                   clamd_address=s.clamd_address or None,
                                   nsfw=s.nsfw_detector or None))
