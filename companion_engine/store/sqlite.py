"""SQLite store (the embedded default): WAL mode, one transaction per write.

All turns share one connection, so write transactions are serialised by a lock
(interleaved, one turn's ``commit`` or ``rollback`` would take another's
half-done writes with it), and each runs as its own task shielded from the
caller's cancellation: a client that disconnects mid-write never leaves the
connection inside an open transaction.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite

from companion_engine.store.base import Conversation, Store, StoredMessage

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, character_id TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL, content TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, meta TEXT);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


def sqlite_path(url: str, base_dir: Path) -> Path | str:
    """``sqlite:///rel/path`` is relative to the config folder, ``sqlite:////abs`` absolute."""
    rest = url.removeprefix("sqlite:")
    rest = rest.removeprefix("//")
    if rest in ("/:memory:", ":memory:"):
        return ":memory:"
    rest = rest.removeprefix("/")
    p = Path(rest)
    return p if p.is_absolute() else base_dir / p


class SQLiteStore(Store):
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self._write_lock = asyncio.Lock()
        self._writes: set[asyncio.Task[Any]] = set()

    async def _transaction(self, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``work`` then commit (rollback on error), alone, to the end even if cancelled."""

        async def run() -> Any:
            async with self._write_lock:
                try:
                    result = await work()
                    await self.db.commit()
                    return result
                except BaseException:
                    await self.db.rollback()
                    raise

        task = asyncio.get_running_loop().create_task(run())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return await asyncio.shield(task)

    @classmethod
    async def open(cls, url: str, base_dir: Path) -> SQLiteStore:
        path = sqlite_path(url, base_dir)
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.executescript(SCHEMA)
        await db.commit()
        return cls(db)

    async def get_setting(self, key: str) -> Any | None:
        async with self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row else None

    async def set_setting(self, key: str, value: Any) -> None:
        async def work() -> None:
            if value is None:
                await self.db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                await self.db.execute(
                    "INSERT INTO settings(key, value) VALUES(?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)),
                )

        await self._transaction(work)

    async def append_messages(
        self, conversation_id: str, messages: list[StoredMessage], *, character_id: str | None
    ) -> None:
        now = time.time()

        async def work() -> None:
            await self.db.execute(
                "INSERT INTO conversations(id, character_id, created_at, updated_at) "
                "VALUES(?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
                (conversation_id, character_id, now, now),
            )
            await self.db.executemany(
                "INSERT INTO messages(conversation_id, role, content, status, created_at, meta) "
                "VALUES(?, ?, ?, ?, ?, ?)",
                [
                    (conversation_id, m.role, m.content, m.status, m.created_at or now,
                     json.dumps(m.meta) if m.meta else None)
                    for m in messages
                ],
            )

        await self._transaction(work)

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        async with self.db.execute(
            "SELECT character_id, created_at, updated_at FROM conversations WHERE id = ?",
            (conversation_id,),
        ) as cur:
            head = await cur.fetchone()
        if head is None:
            return None
        async with self.db.execute(
            "SELECT role, content, status, created_at, meta FROM messages "
            "WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        ) as cur:
            rows = await cur.fetchall()
        msgs = [StoredMessage(r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else {})
                for r in rows]
        return Conversation(conversation_id, head[0], head[1], head[2], msgs)

    async def delete_conversation(self, conversation_id: str) -> bool:
        async def work() -> bool:
            cur = await self.db.execute("DELETE FROM conversations WHERE id = ?",
                                        (conversation_id,))
            return (cur.rowcount or 0) > 0

        return bool(await self._transaction(work))

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self.db.close()
