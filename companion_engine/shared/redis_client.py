"""A Redis client that says "the store is away" in one way, and knows when it is.

Every backend that talks to Redis (the conversation store, the shared state)
uses ``connect``: commands and pipelines that fail because Redis is down or
restarting raise ``StoreUnavailable`` (a 503 for the client), and ``available``
says whether the last command got through. Retries are short (a few hundred
ms) so a restart of Redis is bridged when it is quick and a request gets its
503 promptly when it is not. The connection pool reconnects by itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from companion_engine.shared.base import StoreUnavailable, is_outage

DEFAULT_PREFIX = "companion:"
#: Retries of a command whose connection failed: 50, 100, 200 ms.
RETRY = Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=3)


def split_prefix(url: str) -> tuple[str, str]:
    """The URL without our ``prefix`` query parameter, and the prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def _unavailable(exc: RedisError) -> StoreUnavailable:
    return StoreUnavailable(f"the Redis store is unavailable ({type(exc).__name__}: {exc})")


class OutageAwareRedis(aioredis.Redis):
    """``redis.asyncio.Redis`` whose outages raise ``StoreUnavailable``."""

    available: bool = True

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            result = await super().execute_command(*args, **options)
        except RedisError as exc:
            if is_outage(exc):
                self.available = False
                raise _unavailable(exc) from exc
            raise
        self.available = True
        return result

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None
                 ) -> OutageAwarePipeline:
        pipe = OutageAwarePipeline(self.connection_pool, self.response_callbacks, transaction,
                                   shard_hint)
        pipe.owner = self
        return pipe


class OutageAwarePipeline(Pipeline):
    owner: OutageAwareRedis

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            result = await super().execute(raise_on_error)
        except RedisError as exc:
            if is_outage(exc):
                self.owner.available = False
                raise _unavailable(exc) from exc
            raise
        self.owner.available = True
        return result


async def connect(url: str) -> tuple[OutageAwareRedis, str]:
    """A client for ``url`` (and the key prefix), pinged so a wrong URL fails at start-up."""
    clean, prefix = split_prefix(url)
    client = OutageAwareRedis.from_url(
        clean, decode_responses=True, retry=RETRY, socket_connect_timeout=2,
        socket_timeout=5, health_check_interval=15)
    try:
        await client.ping()
    except Exception:
        await client.aclose()
        raise
    return client, prefix
