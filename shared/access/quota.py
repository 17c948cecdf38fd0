"""Rate limits counted in Redis, through the `limits` library, and the daily quotas'
sizes.

- Per-user and per-IP request rates: moving windows, so "20 per 2 seconds" allows
  bursts of 20 at an average of 10/s. Each check costs one Redis round trip (a Lua
  script inside `limits`). A rate hit is spent even if the request fails: it counts
  requests, not work.
- The daily presign and try-on quotas are stated here (`limits`) but counted in the
  database, in the transaction that writes what they pay for
  (shared/access/daily_quota.py): a request that fails is not charged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from shared.core.errors import AppError
from shared.core.timeouts import redis_options


@dataclass(frozen=True)
class Limits:
    presign_daily: RateLimitItem
    user_rate: RateLimitItem
    ip_rate: RateLimitItem
    tryon_daily: RateLimitItem


class QuotaService:
    def __init__(self, redis_url: str, *, presign_daily: int, user_rate: str, ip_rate: str,
                 tryon_daily: int = 20, namespace: str = "hf",
                 redis_timeout: float = 2.0) -> None:
        self.redis_url, self.namespace = redis_url, namespace
        self.redis_timeout = redis_timeout  # REDIS_TIMEOUT_SECONDS: each command's worst case
        storage = RedisStorage(redis_url, key_prefix=f"{namespace}:limits",
                               **redis_options(redis_timeout))
        self._moving = MovingWindowRateLimiter(storage)
        self.limits = Limits(parse(f"{presign_daily}/day"), parse(user_rate), parse(ip_rate),
                             parse(f"{tryon_daily}/day"))

    def check_ip_rate(self, ip: str) -> None:
        self._hit(self._moving, self.limits.ip_rate, "rate.limited", "ip", ip)

    def check_user_rate(self, user_id: str) -> None:
        self._hit(self._moving, self.limits.user_rate, "rate.limited", "user", user_id)

    def _hit(self, limiter: MovingWindowRateLimiter,
             item: RateLimitItem, code: str, *identifiers: str) -> None:
        if limiter.hit(item, *identifiers):
            return
        reset_at = limiter.get_window_stats(item, *identifiers).reset_time
        raise AppError(code, retry_after=max(1, math.ceil(reset_at - time.time())))

    def ping(self) -> None:
        if not self._moving.storage.check():
            raise ConnectionError("redis unreachable")
