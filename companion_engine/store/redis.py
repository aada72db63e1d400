"""Redis store, for several server instances sharing conversations and settings.

Layout under a key prefix (``companion:`` by default, ``?prefix=`` in the URL):

- ``{prefix}settings``: a hash, field -> JSON value;
- ``{prefix}conv:{id}``: a hash with ``character_id``, ``created_at``, ``updated_at``;
- ``{prefix}conv:{id}:messages``: a list of JSON messages, oldest first.

Each append is one ``MULTI``/``EXEC`` transaction, so a turn's messages land
together or not at all, exactly like the SQLite store.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis

from companion_engine.store.base import Conversation, Store, StoredMessage

DEFAULT_PREFIX = "companion:"


def split_prefix(url: str) -> tuple[str, str]:
    """The URL without our ``prefix`` query parameter, and the prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


class RedisStore(Store):
    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    async def open(cls, url: str) -> RedisStore:
        """Connect and ping, so a wrong URL fails at start-up, not at the first turn."""
        clean, prefix = split_prefix(url)
        client = aioredis.Redis.from_url(clean, decode_responses=True)
        try:
            await client.ping()
        except Exception:
            await client.aclose()
            raise
        return cls(client, prefix)

    def _settings(self) -> str:
        return f"{self.prefix}settings"

    def _head(self, conversation_id: str) -> str:
        return f"{self.prefix}conv:{conversation_id}"

    def _messages(self, conversation_id: str) -> str:
        return f"{self.prefix}conv:{conversation_id}:messages"

    async def get_setting(self, key: str) -> Any | None:
        value = await self.client.hget(self._settings(), key)
        return json.loads(value) if value is not None else None

    async def set_setting(self, key: str, value: Any) -> None:
        if value is None:
            await self.client.hdel(self._settings(), key)
        else:
            await self.client.hset(self._settings(), key, json.dumps(value))

    async def append_messages(
        self, conversation_id: str, messages: list[StoredMessage], *, character_id: str | None
    ) -> None:
        now = time.time()
        head = self._head(conversation_id)
        async with self.client.pipeline(transaction=True) as tx:
            tx.hsetnx(head, "created_at", repr(now))
            tx.hsetnx(head, "character_id", json.dumps(character_id))
            tx.hset(head, "updated_at", repr(now))
            tx.rpush(self._messages(conversation_id), *[
                json.dumps({"role": m.role, "content": m.content, "status": m.status,
                            "created_at": m.created_at or now, "meta": m.meta})
                for m in messages])
            await tx.execute()

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        async with self.client.pipeline(transaction=True) as tx:
            tx.hgetall(self._head(conversation_id))
            tx.lrange(self._messages(conversation_id), 0, -1)
            head, raw = await tx.execute()
        if not head:
            return None
        msgs = []
        for item in raw:
            d = json.loads(item)
            msgs.append(StoredMessage(d["role"], d["content"], d["status"], d["created_at"],
                                      d.get("meta") or {}))
        return Conversation(conversation_id, json.loads(head.get("character_id", "null")),
                            float(head["created_at"]), float(head["updated_at"]), msgs)

    async def delete_conversation(self, conversation_id: str) -> bool:
        removed = await self.client.delete(self._head(conversation_id),
                                           self._messages(conversation_id))
        return bool(removed)

    async def close(self) -> None:
        await self.client.aclose()
