"""Redis store, for several server instances sharing conversations and settings.

Layout under a key prefix (``companion:`` by default, ``?prefix=`` in the URL):

- ``{prefix}settings``: a hash, field -> JSON value;
- ``{prefix}conv:{id}``: a hash with ``character_id`` (JSON), ``created_at``,
  ``updated_at``, ``version``, ``character_ids`` (JSON), ``reply_order``, ``title``
  (JSON), ``branched_from`` (JSON);
- ``{prefix}conv:{id}:messages``: a list of JSON messages, oldest first;
- ``{prefix}conv:{id}:state``: a hash, state key -> JSON value;
- ``{prefix}conversations``: a sorted set of ids by ``updated_at`` (the listing);
- ``{prefix}character:{id}:conversations``: a set of the ids a character takes part in.

An append is one Lua script (atomic, one round trip: it creates the
conversation if new, and writes its greeting only while it has no messages). An edit
is an optimistic transaction: ``WATCH`` the conversation's keys, read, check the
version, ``MULTI``/``EXEC`` the change; a concurrent writer makes ``EXEC`` fail
and the edit is retried against what that writer left (or reported stale).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from companion_engine.shared.redis_client import DEFAULT_PREFIX, connect, split_prefix
from companion_engine.store.base import (
    Conversation,
    ConversationExists,
    ConversationNotFound,
    ConversationSummary,
    Edit,
    Store,
    StoredMessage,
    branch_of,
    check_version,
    stamp,
)

__all__ = ["DEFAULT_PREFIX", "RedisStore", "split_prefix"]

#: An edit that keeps losing the race to other writers gives up after this many tries.
MAX_RETRIES = 50

#: KEYS: head, messages, listing, member sets...; ARGV: now, conversation id,
#: number of head fields (pairs), number of opening messages, fields..., opening..., messages...
APPEND = """
local head, msgs = KEYS[1], KEYS[2]
local now, id = ARGV[1], ARGV[2]
local n_fields, n_open = tonumber(ARGV[3]), tonumber(ARGV[4])
local i = 5
local created = redis.call('HSETNX', head, 'created_at', now)
if created == 1 then
  for _ = 1, n_fields do
    redis.call('HSET', head, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  for k = 4, #KEYS do redis.call('SADD', KEYS[k], id) end
else
  i = i + 2 * n_fields
end
local opened = 0
if n_open > 0 and redis.call('LLEN', msgs) == 0 then
  for _ = 1, n_open do
    redis.call('RPUSH', msgs, ARGV[i])
    i = i + 1
  end
  opened = 1
else
  i = i + n_open
end
for j = i, #ARGV do redis.call('RPUSH', msgs, ARGV[j]) end
redis.call('HSET', head, 'updated_at', now)
redis.call('ZADD', KEYS[3], now, id)
return {redis.call('HINCRBY', head, 'version', 1), opened}
"""


def _encode(m: StoredMessage) -> str:
    return json.dumps(m.to_json())


def _head_fields(conv: Conversation) -> dict[str, str]:
    return {"character_id": json.dumps(conv.character_id),
            "character_ids": json.dumps(conv.character_ids),
            "reply_order": conv.reply_order, "title": json.dumps(conv.title),
            "branched_from": json.dumps(conv.branched_from)}


def _conversation(conversation_id: str, head: dict[str, str], raw: list[str]) -> Conversation:
    character_id = json.loads(head.get("character_id", "null"))
    ids = json.loads(head["character_ids"]) if "character_ids" in head else (
        [character_id] if character_id else [])
    return Conversation(
        conversation_id, character_id, float(head["created_at"]), float(head["updated_at"]),
        [StoredMessage.from_json(json.loads(item)) for item in raw],
        int(head.get("version", 1)), ids, head.get("reply_order") or "natural",  # type: ignore[arg-type]
        json.loads(head.get("title", "null")), json.loads(head.get("branched_from", "null")))


class RedisStore(Store):
    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__()
        self.client = client
        self.prefix = prefix
        #: The settings hash (the shared state reads it with each request's limits).
        self.settings_key = f"{prefix}settings"
        self._append_script = client.register_script(APPEND)

    @classmethod
    async def open(cls, url: str) -> RedisStore:
        """Connect and ping, so a wrong URL fails at start-up, not at the first turn.

        Outages raise ``StoreUnavailable`` (503) and heal by themselves
        (``companion_engine.shared.redis_client``).
        """
        client, prefix = await connect(url)
        try:
            store = cls(client, prefix)
            await store._migrate()
        except Exception:
            await client.aclose()
            raise
        return store

    # --- keys -------------------------------------------------------------------------------

    def _settings(self) -> str:
        return self.settings_key

    def _head(self, conversation_id: str) -> str:
        return f"{self.prefix}conv:{conversation_id}"

    def _messages(self, conversation_id: str) -> str:
        return f"{self.prefix}conv:{conversation_id}:messages"

    def _state(self, conversation_id: str) -> str:
        return f"{self.prefix}conv:{conversation_id}:state"

    def _listing(self) -> str:
        return f"{self.prefix}conversations"

    def _member(self, character_id: str) -> str:
        return f"{self.prefix}character:{character_id}:conversations"

    async def _migrate(self) -> None:
        """Index conversations written before the listing existed (once per prefix)."""
        marker = f"{self.prefix}schema"
        if await self.client.get(marker) == "2":
            return
        async for key in self.client.scan_iter(match=f"{self.prefix}conv:*", count=500):
            rest = key[len(self.prefix) + len("conv:"):]
            if rest.endswith((":messages", ":state")):
                continue
            head = await self.client.hgetall(key)
            if "updated_at" not in head:
                continue
            await self.client.hsetnx(key, "version", 1)
            await self.client.zadd(self._listing(), {rest: float(head["updated_at"])})
            character_id = json.loads(head.get("character_id", "null"))
            if character_id:
                await self.client.sadd(self._member(character_id), rest)
        await self.client.set(marker, "2")

    # --- settings ---------------------------------------------------------------------------

    async def get_setting(self, key: str) -> Any | None:
        value = await self.client.hget(self._settings(), key)
        return json.loads(value) if value is not None else None

    async def get_settings(self, keys: Iterable[str]) -> dict[str, Any]:
        names = list(keys)
        values = await self.client.hmget(self._settings(), names)
        return {k: json.loads(v) for k, v in zip(names, values, strict=True) if v is not None}

    async def set_setting(self, key: str, value: Any) -> None:
        if value is None:
            await self.client.hdel(self._settings(), key)
        else:
            await self.client.hset(self._settings(), key, json.dumps(value))

    # --- conversations ----------------------------------------------------------------------

    async def _append(self, conversation_id: str, messages: list[StoredMessage], *,
                      character_id: str | None, opening: list[StoredMessage], now: float
                      ) -> tuple[int, bool]:
        encoded = [_encode(m) for m in messages]
        opened = [_encode(m) for m in opening]
        fields = {"character_id": json.dumps(character_id),
                  "character_ids": json.dumps([character_id] if character_id else [])}
        members = [self._member(character_id)] if character_id else []
        version, with_opening = await self._append_script(
            keys=[self._head(conversation_id), self._messages(conversation_id),
                  self._listing(), *members],
            args=[repr(now), conversation_id, len(fields), len(opened),
                  *[x for kv in fields.items() for x in kv], *opened, *encoded])
        return int(version), bool(int(with_opening))

    async def _create(self, conv: Conversation, state: dict[str, Any]) -> None:
        state_fields = _state_fields(state)
        head_key = self._head(conv.id)
        async with self.client.pipeline(transaction=True) as pipe:
            await pipe.watch(head_key)
            if await pipe.exists(head_key):
                raise ConversationExists(conv.id)
            pipe.multi()
            self._write_new(pipe, conv, state_fields)
            try:
                await pipe.execute()
            except WatchError:
                raise ConversationExists(conv.id) from None

    def _write_new(self, pipe: Any, conv: Conversation, state_fields: dict[str, str]) -> None:
        """Queue the writes of a whole new conversation on a ``MULTI`` pipeline."""
        pipe.delete(self._messages(conv.id), self._state(conv.id))
        pipe.hset(self._head(conv.id), mapping={
            **_head_fields(conv), "created_at": repr(conv.created_at),
            "updated_at": repr(conv.updated_at), "version": conv.version})
        if conv.messages:
            pipe.rpush(self._messages(conv.id), *[_encode(m) for m in conv.messages])
        if state_fields:
            pipe.hset(self._state(conv.id), mapping=state_fields)
        pipe.zadd(self._listing(), {conv.id: conv.updated_at})
        for character_id in conv.character_ids:
            pipe.sadd(self._member(character_id), conv.id)

    async def _version(self, conversation_id: str) -> int | None:
        # One command: every head has ``created_at`` (a head from before versions: 1).
        version, created = await self.client.hmget(self._head(conversation_id),
                                                   ["version", "created_at"])
        if created is None:
            return None
        return int(version) if version is not None else 1

    async def _load(self, conversation_id: str) -> Conversation | None:
        async with self.client.pipeline(transaction=True) as tx:
            tx.hgetall(self._head(conversation_id))
            tx.lrange(self._messages(conversation_id), 0, -1)
            head, raw = await tx.execute()
        if not head:
            return None
        return _conversation(conversation_id, head, raw)

    async def list_conversations(
        self, *, character_id: str | None = None, limit: int = 50, offset: int = 0,
    ) -> list[ConversationSummary]:
        if character_id is None:
            ids = await self.client.zrevrange(self._listing(), offset, offset + limit - 1)
        else:
            members = list(await self.client.smembers(self._member(character_id)))
            scores = await self.client.zmscore(self._listing(), members) if members else []
            ranked = sorted(((s, i) for i, s in zip(members, scores, strict=True)
                             if s is not None), reverse=True)
            ids = [i for _, i in ranked[offset:offset + limit]]
        if not ids:
            return []
        async with self.client.pipeline(transaction=True) as tx:
            for cid in ids:
                tx.hgetall(self._head(cid))
                tx.llen(self._messages(cid))
                tx.lindex(self._messages(cid), -1)
            raw = await tx.execute()
        out = []
        for n, cid in enumerate(ids):
            head, count, last = raw[3 * n:3 * n + 3]
            if not head:
                continue  # deleted between the two reads
            conv = _conversation(cid, head, [])
            out.append(ConversationSummary(
                cid, conv.character_id, conv.character_ids, conv.title, conv.created_at,
                conv.updated_at, conv.version, int(count),
                StoredMessage.from_json(json.loads(last)) if last else None))
        return out

    async def _delete(self, conversation_id: str) -> bool:
        head_key = self._head(conversation_id)
        head = await self.client.hgetall(head_key)
        members = _conversation(conversation_id, head, []).character_ids if head else []
        async with self.client.pipeline(transaction=True) as tx:
            tx.delete(head_key, self._messages(conversation_id))
            tx.delete(self._state(conversation_id))
            tx.zrem(self._listing(), conversation_id)
            for character_id in members:
                tx.srem(self._member(character_id), conversation_id)
            removed, *_ = await tx.execute()
        return bool(removed)

    # --- state ------------------------------------------------------------------------------

    async def get_state(self, conversation_id: str) -> dict[str, Any]:
        raw = await self.client.hgetall(self._state(conversation_id))
        return {k: json.loads(v) for k, v in raw.items()}

    async def update_state(self, conversation_id: str, changes: dict[str, Any]) -> None:
        fields = _state_fields(changes)
        deleted = [k for k, v in changes.items() if v is None]
        if not fields and not deleted:
            return
        async with self.client.pipeline(transaction=True) as tx:
            if deleted:
                tx.hdel(self._state(conversation_id), *deleted)
            if fields:
                tx.hset(self._state(conversation_id), mapping=fields)
            await tx.execute()

    # --- editing ----------------------------------------------------------------------------

    async def _optimistic(self, keys: list[str], attempt: Callable[[Any], Awaitable[Any]],
                          what: str) -> Any:
        """``attempt(pipe)`` with ``keys`` watched: it reads (immediate mode), calls
        ``pipe.multi()``, queues its writes and returns the result. When another writer
        touched a key meanwhile, ``EXEC`` fails and it runs again on what that one left."""
        for _ in range(MAX_RETRIES):
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(*keys)
                result = await attempt(pipe)
                try:
                    await pipe.execute()
                except WatchError:
                    continue  # another writer got there first: read again
                return result
        raise RuntimeError(f"{what}: gave up after {MAX_RETRIES} concurrent writers won the race")

    async def _watched(self, pipe: Any, conversation_id: str) -> Conversation:
        """The watched conversation: from the cache when it is at the stored version (a
        write meanwhile makes ``EXEC`` fail), else read."""
        version = await pipe.hget(self._head(conversation_id), "version")
        cached = self._cached(conversation_id, int(version) if version else None)
        if cached is not None:
            return cached
        head = await pipe.hgetall(self._head(conversation_id))
        if not head:
            raise ConversationNotFound(conversation_id)
        return _conversation(conversation_id, head,
                             await pipe.lrange(self._messages(conversation_id), 0, -1))

    async def _transact(self, conversation_id: str, edit: Edit,
                        expected_version: int | None) -> Conversation:
        head_key, msgs_key = self._head(conversation_id), self._messages(conversation_id)

        async def attempt(pipe: Any) -> Conversation:
            conv = await self._watched(pipe, conversation_id)
            check_version(conv, expected_version)
            change = edit(conv)
            now = time.time()
            change.append = stamp(change.append, now)
            after = change.apply(conv, now)
            pipe.multi()
            for index, m in change.replace.items():
                pipe.lset(msgs_key, index, _encode(m))
            if change.truncate == 0:
                pipe.delete(msgs_key)
            elif change.truncate is not None:
                pipe.ltrim(msgs_key, 0, change.truncate - 1)
            if change.append:
                pipe.rpush(msgs_key, *[_encode(m) for m in change.append])
            pipe.hset(head_key, mapping={**_head_fields(after), "updated_at": repr(now),
                                         "version": after.version})
            pipe.zadd(self._listing(), {conversation_id: now})
            for gone in set(conv.character_ids) - set(after.character_ids):
                pipe.srem(self._member(gone), conversation_id)
            for new in set(after.character_ids) - set(conv.character_ids):
                pipe.sadd(self._member(new), conversation_id)
            return after

        result: Conversation = await self._optimistic([head_key, msgs_key], attempt,
                                                      f"conversation {conversation_id}")
        return result

    async def _branch(self, conversation_id: str, new_id: str, at: int,
                      expected_version: int | None) -> Conversation:
        new_head = self._head(new_id)

        async def attempt(pipe: Any) -> Conversation:
            source = await self._watched(pipe, conversation_id)
            check_version(source, expected_version)
            if await pipe.exists(new_head):
                raise ConversationExists(new_id)
            state = await pipe.hgetall(self._state(conversation_id))
            conv = branch_of(source, new_id, at, time.time())
            pipe.multi()
            self._write_new(pipe, conv, state)
            return conv

        keys = [self._head(conversation_id), self._messages(conversation_id),
                self._state(conversation_id), new_head]
        result: Conversation = await self._optimistic(keys, attempt,
                                                      f"branching {conversation_id}")
        return result

    async def close(self) -> None:
        await self.client.aclose()


def _state_fields(changes: dict[str, Any]) -> dict[str, str]:
    """Encoded up front: a value that is not JSON fails before anything is written."""
    for key in changes:
        if not isinstance(key, str):
            raise TypeError(f"state keys are strings, not {type(key).__name__}")
    return {k: json.dumps(v) for k, v in changes.items() if v is not None}
