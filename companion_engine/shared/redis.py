"""``RedisState``: buckets, stream slots and broadcasts shared by every engine on one Redis.

Keys, under the store's prefix (``companion:`` by default):

- ``{prefix}rl:{scope}:{client}``: a token bucket (hash ``t`` tokens, ``s`` stamp in ms),
  spent and refilled by one Lua script on Redis's own clock, so engines on machines with
  different clocks agree; it expires after one window idle (by then it would be full);
- ``{prefix}streams:{client}``: a sorted set of open streams (member: a token naming the
  engine, score: expiry in ms). A stream's engine renews its expiry every
  ``SLOT_RENEW_S``; a crashed engine's slots expire ``SLOT_TTL_S`` later;
- ``{prefix}events``: the pub/sub channel of broadcasts (``POST /-/reload``).

A request's admission (``admit``: its rate-limit token, its stream slot and the
store's shared settings) is one round trip, one ``EVALSHA`` of an atomic script: O(1)
in the number of clients (a client's slots are at most ``max_streams_per_ip``).
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
from collections.abc import Sequence
from typing import Any, ClassVar

from loguru import logger

from companion_engine.shared.base import (
    Admission,
    Event,
    EventHandler,
    RateLimit,
    SharedState,
    Slot,
    is_outage,
)
from companion_engine.shared.local import LocalState
from companion_engine.shared.redis_client import OutageAwareRedis, connect

#: A stream slot not renewed for this long is free again (its engine died).
SLOT_TTL_S = 30.0
SLOT_RENEW_S = 10.0

#: Lua shared by the scripts: Redis's clock, a token bucket, a stream slot.
LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function take(key, capacity, window, now)
  local rate = capacity / window
  local b = redis.call('HMGET', key, 't', 's')
  local tokens = tonumber(b[1])
  if tokens == nil then
    tokens = capacity
  else
    tokens = math.min(capacity, tokens + math.max(0, now - tonumber(b[2])) * rate)
  end
  local wait = 0
  if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
  redis.call('HSET', key, 't', tostring(tokens), 's', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(window))
  return wait
end
local function acquire(key, limit, ttl, token, now)
  now = math.floor(now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= limit then return 0 end
  redis.call('ZADD', key, now + ttl, token)
  redis.call('PEXPIRE', key, ttl)
  return 1
end
"""

#: KEYS: the bucket; ARGV: capacity, window in ms. Returns the wait in ms.
TAKE = LIB + """
return tostring(take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now_ms()))
"""

#: KEYS: the client's streams; ARGV: limit, ttl in ms, token. Returns 1 (taken) or 0.
ACQUIRE = LIB + """
return acquire(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], now_ms())
"""

#: A request's admission. ARGV[1] says which parts are asked for: ``b`` (bucket; KEYS
#: the bucket, ARGV capacity, window in ms), ``s`` (stream slot, only when the bucket
#: allows; KEYS the client's streams, ARGV limit, ttl in ms, token), ``h`` (settings;
#: KEYS the settings hash, ARGV every field after). Returns {wait in ms, slot taken (1)
#: or not (0), the settings' values...}.
ADMIT = LIB + """
local parts, now = ARGV[1], now_ms()
local k, a, wait, slot = 1, 2, 0, 0
if string.find(parts, 'b', 1, true) then
  wait = take(KEYS[k], tonumber(ARGV[a]), tonumber(ARGV[a + 1]), now)
  k, a = k + 1, a + 2
end
if string.find(parts, 's', 1, true) then
  if wait == 0 then
    slot = acquire(KEYS[k], tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2], now)
  end
  k, a = k + 1, a + 3
end
local out = {tostring(wait), slot}
if string.find(parts, 'h', 1, true) then
  local values = redis.call('HMGET', KEYS[k], unpack(ARGV, a))
  for i = 1, #values do out[i + 2] = values[i] end
end
return out
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
                 owns_client: bool = True, settings_key: str | None = None) -> None:
        super().__init__(engine_id)
        self.client = client
        self.prefix = prefix
        #: The store's settings hash, read by ``admit`` (None: not read here).
        self.settings_key = settings_key
        self.channel = f"{prefix}events"
        self._owns_client = owns_client
        self.slot_ttl_s = SLOT_TTL_S
        self.slot_renew_s = SLOT_RENEW_S
        self._take = client.register_script(TAKE)
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._admit = client.register_script(ADMIT)
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

    def _token(self) -> str:
        return f"{self.engine_id}:{next(self._tokens)}"

    def _opened(self, key: str, token: str) -> Slot:
        slot = self._open[token] = Slot(key, token)
        return slot

    async def _local_slot(self, key: str, limit: int) -> Slot | None:
        local = await self.fallback.acquire_stream(key, limit)
        return Slot(key, "local:" + local.token) if local is not None else None

    async def acquire_stream(self, key: str, limit: int) -> Slot | None:
        token = self._token()
        try:
            ok = await self._acquire(keys=[self._streams(key)],
                                     args=[limit, int(self.slot_ttl_s * 1000), token])
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._outage("stream slots", exc)
            return await self._local_slot(key, limit)
        self._recovered()
        return self._opened(key, token) if int(ok) else None

    async def admit(self, key: str, *, rate: RateLimit | None = None,
                    streams: int | None = None, settings: Sequence[str] = ()) -> Admission:
        """One ``EVALSHA`` (``ADMIT``): the bucket, the slot and the settings together."""
        parts, keys, args = "", [], []
        if rate is not None:
            parts += "b"
            keys.append(f"{self.prefix}rl:{rate[0]}:{key}")
            args += [rate[1], rate[2] * 1000]
        token = self._token() if streams is not None else ""
        if streams is not None:
            parts += "s"
            keys.append(self._streams(key))
            args += [streams, int(self.slot_ttl_s * 1000), token]
        names = list(settings) if self.settings_key is not None else []
        if names:
            parts += "h"
            keys.append(self.settings_key)
            args += names
        try:
            reply = await self._admit(keys=keys, args=[parts, *args])
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._outage("rate limits and stream slots", exc)
            wait = (await self.fallback.take(rate[0], key, rate[1], rate[2])
                    if rate is not None else 0.0)
            slot = await self._local_slot(key, streams) if streams is not None and not wait \
                else None
            return Admission(wait, slot)
        self._recovered()
        wait_ms, taken, *values = reply
        slot = self._opened(key, token) if int(taken) else None
        read = ({n: json.loads(v) for n, v in zip(names, values, strict=True) if v is not None}
                if names else None)
        return Admission(float(wait_ms) / 1000, slot, read)

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
