"""The dependencies domain functions receive, built once per process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.core.clock import Clock, utcnow
from shared.core.config import Settings
from shared.core.db import make_engine, make_session_factory
from shared.storage.s3 import ObjectStorage, S3Storage

if TYPE_CHECKING:
    from shared.access.idempotency import IdempotencyStore
    from shared.fal.gateway import FalGateway

Dispatcher = Callable[..., bool]


def _default_dispatch(task_name: str, *args: object, countdown: float | None = None) -> bool:
    from shared.core.tasks import send

    return send(task_name, *args, countdown=countdown)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: ObjectStorage
    clock: Clock = utcnow
    dispatch: Dispatcher = field(default=_default_dispatch)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        engine = make_engine(settings.database_url)
        return cls(settings=settings, engine=engine, sessions=make_session_factory(engine),
                   storage=S3Storage(settings))

    @cached_property
    def fal(self) -> FalGateway:
        from shared.fal.gateway import FalClientGateway

        return FalClientGateway(self.settings)

    @cached_property
    def idempotency(self) -> IdempotencyStore:
        """Idempotency-Key records (the API replays them; an erasure forgets them)."""
        from shared.access.idempotency import IdempotencyStore

        return IdempotencyStore(self.settings.redis_url)

    @cached_property
    def scanners(self) -> list[object]:
        from shared.images.scanners import build_scanners

        s = self.settings
        return list(build_scanners(face_enabled=s.face_detection,
                                   clamd_address=s.clamd_address or None,
                                   nsfw=s.nsfw_detector or None))
