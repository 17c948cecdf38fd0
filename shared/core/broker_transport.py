"""kombu's Redis transport, with one Redis client per channel for the commands it
sends outside a pipeline.

The stock channel builds a new `redis.Redis` for every publish, acknowledgement and
task event (`Channel.conn_or_acquire`): ~0.17 ms of CPU each here, nearly the cost
of the LPUSH itself, and several per job (docs/performance.md). A `redis.Redis` is
safe to share between threads: each command takes its own connection from the pool
the client was built on. So the client is built once and rebuilt only when the
channel's pool is replaced (kombu drops its pools after a fork or a connection
error), so it never outlives the pool it uses.

celeryconfig.py names this transport for `redis://` broker URLs only: `rediss://`
keeps kombu's own, whose TLS set-up goes by that scheme.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """celeryconfig's `broker_transport`: this module's for a plain `redis://` URL,
    else None (kombu's choice by the URL's scheme)."""
    return f"{__name__}:Transport" if broker_url.startswith("redis://") else None
