"""Quotas and rate limits counted in Redis, through the `limits` library.

- Per-user daily presign quota: a fixed 24 h window that starts at the user's
  first presign (the counter's key expires with it).
- Per-user and per-IP request rates: moving windows, so "20 per 2 seconds" allows
  bursts of 20 at an average of 10/s.
Each check costs one Redis round trip (a Lua script inside `limits`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from shared.core.errors import AppError


@dataclass(frozen=True)
class Limits:
    presign_daily: RateLimitItem
    user_rate: RateLimitItem
    ip_rate: RateLimitItem
    tryon_daily: RateLimitItem


class QuotaService:
    def __init__(self, redis_url: str, *, presign_daily: int, user_rate: str, ip_rate: str,
                 tryon_daily: int = 20, namespace: str = "hf") -> None:
        self.redis_url, self.namespace = redis_url, namespace
        storage = RedisStorage(redis_url, key_prefix=f"{namespace}:limits",
                               socket_timeout=2, socket_connect_timeout=2)
        self._fixed = FixedWindowRateLimiter(storage)
        self._moving = MovingWindowRateLimiter(storage)
        self.limits = Limits(parse(f"{presign_daily}/day"), parse(user_rate), parse(ip_rate),
                             parse(f"{tryon_daily}/day"))

    def check_ip_rate(self, ip: str) -> None:
        self._hit(self._moving, self.limits.ip_rate, "rate.limited", "ip", ip)

    def check_user_rate(self, user_id: str) -> None:
        self._hit(self._moving, self.limits.user_rate, "rate.limited", "user", user_id)

    def consume_presign(self, user_id: str) -> None:
        self._hit(self._fixed, self.limits.presign_daily, "quota.exceeded", "presign", user_id)

    def consume_tryon(self, user_id: str) -> None:
        """Each try-on is a paid fal call: a daily quota per user."""
        self._hit(self._fixed, self.limits.tryon_daily, "quota.exceeded", "tryon", user_id)

    def _hit(self, limiter: FixedWindowRateLimiter | MovingWindowRateLimiter,
             item: RateLimitItem, code: str, *identifiers: str) -> None:
        if limiter.hit(item, *identifiers):
            return
        reset_at = limiter.get_window_stats(item, *identifiers).reset_time
        raise AppError(code, retry_after=max(1, math.ceil(reset_at - time.time())))

    def ping(self) -> None:
        if not self._fixed.storage.check():
            raise ConnectionError("redis unreachable")
