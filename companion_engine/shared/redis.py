"""``RedisState``: buckets, stream slots and broadcasts shared by every engine on one Redis.

Keys, under the store's prefix (``companion:`` by default):

- ``{prefix}rl:{scope}:{client}``: a token bucket (hash ``t`` tokens, ``s`` stamp in ms),
  spent and refilled by one Lua script on Redis's own clock, so engines on machines with
  different clocks agree; it expires after one window idle (by then it would be full);
- ``{prefix}streams:{client}``: a sorted set of open streams (member: a token naming the
  engine, score: expiry in ms). A stream's engine renews its expiry every
  ``SLOT_RENEW_S``; a crashed engine's slots expire ``SLOT_TTL_S`` later;
- ``{prefix}events``: the pub/sub channel of broadcasts (``POST /-/reload``).

Each request costs one round trip (one ``EVALSHA``): O(1) in the number of clients.
When Redis is unreachable, limits fall back to this process's own buckets and slots
(logged) so routes that need nothing else from Redis keep working; routes that need
the store answer 503 until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any, ClassVar

from loguru import logger

from companion_engine.shared.base import Event, EventHandler, SharedState, Slot, is_outage
from companion_engine.shared.local import LocalState
from companion_engine.shared.redis_client import OutageAwareRedis, connect

#: A stream slot not renewed for this long is free again (its engine died).
SLOT_TTL_S = 30.0
SLOT_RENEW_S = 10.0

TAKE = """
local capacity = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rate = capacity / window
local b = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(b[1])
if tokens == nil then
  tokens = capacity
else
  tokens = math.min(capacity, tokens + math.max(0, now - tonumber(b[2])) * rate)
end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 's', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(window))
return tostring(wait)
"""

ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
"""


class RedisState(SharedState):
    backend: ClassVar[str] = "redis"
    cluster_wide: ClassVar[bool] = True

    def __init__(self, client: OutageAwareRedis, prefix: str, engine_id: str, *,
                 owns_client: bool = True) -> None:
        super().__init__(engine_id)
        self.client = client
        self.prefix = prefix
        self.channel = f"{prefix}events"
        self._owns_client = owns_client
        self.slot_ttl_s = SLOT_TTL_S
        self.slot_renew_s = SLOT_RENEW_S
        self._take = client.register_script(TAKE)
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        #: Where limits go while Redis is away.
        self.fallback = LocalState(engine_id)
        self._open: dict[str, Slot] = {}
        self._tokens = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = False
        self._warned = False

    @classmethod
    async def open(cls, url: str, *, engine_id: str) -> RedisState:
        client, prefix = await connect(url)
        return cls(client, prefix, engine_id)

    @property
    def connected(self) -> bool:
        return self.client.available

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, handler: EventHandler) -> None:
        await super().start(handler)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(), name="shared-listen"),
                       loop.create_task(self._renew_slots(), name="shared-renew")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._open:
            with contextlib.suppress(Exception):
                async with self.client.pipeline(transaction=False) as pipe:
                    for slot in self._open.values():
                        pipe.zrem(self._streams(slot.key), slot.token)
                    await pipe.execute()
            self._open.clear()
        if self._owns_client:
            await self.client.aclose()

    # --- limits -------------------------------------------------------------------------------

    def _outage(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            logger.warning("Redis unavailable for {} ({}); limits are per engine until it is "
                           "back", what, exc)
            self._warned = True

    def _recovered(self) -> None:
        if self._warned:
            logger.info("Redis is back; limits are shared again")
            self._warned = False

    async def take(self, scope: str, key: str, capacity: int, window_s: float) -> float:
        try:
            wait = await self._take(keys=[f"{self.prefix}rl:{scope}:{key}"],
                                    args=[capacity, window_s * 1000])
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._outage("rate limits", exc)
            return await self.fallback.take(scope, key, capacity, window_s)
        self._recovered()
        return float(wait) / 1000

    def _streams(self, key: str) -> str:
        return f"{self.prefix}streams:{key}"

    async def acquire_stream(self, key: str, limit: int) -> Slot | None:
        token = f"{self.engine_id}:{next(self._tokens)}"
        try:
            ok = await self._acquire(keys=[self._streams(key)],
                                     args=[limit, int(self.slot_ttl_s * 1000), token])
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._outage("stream slots", exc)
            local = await self.fallback.acquire_stream(key, limit)
            return Slot(key, "local:" + local.token) if local is not None else None
        self._recovered()
        if not int(ok):
            return None
        slot = Slot(key, token)
        self._open[token] = slot
        return slot

    async def release_stream(self, slot: Slot) -> None:
        if slot.token.startswith("local:"):
            await self.fallback.release_stream(slot)
            return
        self._open.pop(slot.token, None)
        try:
            await self.client.zrem(self._streams(slot.key), slot.token)
        except Exception as exc:  # it expires by itself
            logger.debug("releasing stream slot {} failed: {}", slot.token, exc)

    async def _renew_slots(self) -> None:
        """Keep this engine's open slots alive: one script call per period, not per stream."""
        while True:
            await asyncio.sleep(self.slot_renew_s)
            slots = list(self._open.values())
            if not slots:
                continue
            try:
                await self._renew(keys=[self._streams(s.key) for s in slots],
                                  args=[int(self.slot_ttl_s * 1000),
                                        *[s.token for s in slots]])
            except Exception as exc:
                logger.debug("renewing {} stream slot(s) failed: {}", len(slots), exc)

    # --- broadcasts ---------------------------------------------------------------------------

    async def publish(self, event: Event) -> int:
        receivers = await self.client.publish(
            self.channel, json.dumps({**event, "origin": self.engine_id}))
        return max(0, int(receivers) - (1 if self._listening else 0))

    async def _listen(self) -> None:
        """Receive broadcasts; on a lost connection, resubscribe with backoff, forever."""
        backoff = 0.1
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._listening = True
                backoff = 0.1
                async for message in pubsub.listen():
                    await self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_outage(exc):
                    logger.opt(exception=exc).error("broadcast listener failed")
                else:
                    logger.debug("broadcast listener lost Redis: {}", exc)
            finally:
                self._listening = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        try:
            event = json.loads(message["data"])
        except (TypeError, ValueError):
            logger.warning("ignored a malformed broadcast on {}", self.channel)
            return
        if isinstance(event, dict):
            started = time.perf_counter()
            await self._deliver(event)
            logger.debug("broadcast {} handled in {:.1f} ms", event.get("type"),
                         (time.perf_counter() - started) * 1000)
