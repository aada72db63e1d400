"""SQLite store (the embedded default): WAL mode, one transaction per write.

Two connections: writes go through one, serialised by a lock and each inside
``BEGIN IMMEDIATE`` (so a version check and the write it guards are one
transaction, even with several processes on the file); reads go through the
other and, in WAL mode, only ever see committed transactions — never half of a
write in progress. Each write runs as its own task shielded from the caller's
cancellation: a client that disconnects mid-write never leaves the connection
inside an open transaction.

Schema version 2 (``PRAGMA user_version``) added conversation versions, group
fields, message ids and swipes, and per-conversation state; an older database
is migrated in place when opened.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from companion_engine.store.base import (
    Conversation,
    ConversationExists,
    ConversationNotFound,
    ConversationSummary,
    Edit,
    Store,
    StoredMessage,
    Swipe,
    branch_of,
    check_version,
    stamp,
)

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, character_id TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1, character_ids TEXT, reply_order TEXT, title TEXT,
    branched_from TEXT);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL, content TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, meta TEXT,
    uid TEXT, swipes TEXT, swipe_index INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE IF NOT EXISTS conversation_state (
    conversation_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (conversation_id, key)) WITHOUT ROWID;
"""

#: Columns added by schema 2, for databases created by schema 1.
ADDED_COLUMNS = {
    "conversations": [("version", "INTEGER NOT NULL DEFAULT 1"), ("character_ids", "TEXT"),
                      ("reply_order", "TEXT"), ("title", "TEXT"), ("branched_from", "TEXT")],
    "messages": [("uid", "TEXT"), ("swipes", "TEXT"),
                 ("swipe_index", "INTEGER NOT NULL DEFAULT 0")],
}
INDEXES = """
CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations(updated_at);
"""

HEAD_COLUMNS = ("c.id, c.character_id, c.created_at, c.updated_at, c.version, "
                "c.character_ids, c.reply_order, c.title, c.branched_from")
MESSAGE_COLUMNS = ("m.id, m.role, m.content, m.status, m.created_at, m.meta, m.uid, m.swipes, "
                   "m.swipe_index")
_dumps = json.dumps


def sqlite_path(url: str, base_dir: Path) -> Path | str:
    """``sqlite:///rel/path`` is relative to the config folder, ``sqlite:////abs`` absolute."""
    rest = url.removeprefix("sqlite:")
    rest = rest.removeprefix("//")
    if rest in ("/:memory:", ":memory:"):
        return ":memory:"
    rest = rest.removeprefix("/")
    p = Path(rest)
    return p if p.is_absolute() else base_dir / p


def _json_or_none(value: Any) -> str | None:
    return _dumps(value) if value else None


def _message_row(conversation_id: str, m: StoredMessage) -> tuple[Any, ...]:
    return (conversation_id, m.role, m.content, m.status, m.created_at,
            _json_or_none(m.meta), m.id,
            _dumps([s.as_dict() for s in m.swipes]) if m.swipes else None, m.swipe_index)


def _message(row: Sequence[Any]) -> StoredMessage:
    rowid, role, content, status, created_at, meta, uid, swipes, swipe_index = row
    return StoredMessage(role, content, status, created_at, json.loads(meta) if meta else {},
                         uid or f"r{rowid}",
                         [Swipe.from_dict(s) for s in json.loads(swipes)] if swipes else [],
                         swipe_index or 0)


def _head(row: Sequence[Any], messages: list[StoredMessage]) -> Conversation:
    cid, character_id, created_at, updated_at, version, ids, order, title, branched = row
    return Conversation(cid, character_id, created_at, updated_at, messages, version or 1,
                        json.loads(ids) if ids else ([character_id] if character_id else []),
                        order or "natural", title, json.loads(branched) if branched else None)


READ_HEAD = f"SELECT {HEAD_COLUMNS} FROM conversations c WHERE c.id = ?"
READ_MESSAGES = (f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = ? "
                 "ORDER BY m.id")
INSERT_MESSAGE = ("INSERT INTO messages(conversation_id, role, content, status, created_at, "
                  "meta, uid, swipes, swipe_index) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)")


async def _connect(path: Path | str) -> aiosqlite.Connection:
    """A connection in autocommit mode (we issue ``BEGIN``) whose worker thread never keeps
    the process alive: aiosqlite's is not a daemon thread, so one store left open (a test
    that failed half-way through start-up) would hang the interpreter at exit instead of
    letting it report the failure."""
    conn = aiosqlite.connect(path, isolation_level=None)
    thread = getattr(conn, "_thread", None)
    if thread is not None and not thread.is_alive():
        thread.daemon = True
    return await conn


async def _one(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first row of a query, or None (one trip to the connection's thread)."""
    rows = await db.execute_fetchall(sql, params)
    return next(iter(rows), None)


async def _all(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(await db.execute_fetchall(sql, params))


class SQLiteStore(Store):
    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection | None = None
                 ) -> None:
        super().__init__()
        self.db = db
        #: Reads see only committed data (a second connection; the same one for ``:memory:``).
        self.reader = reader or db
        self._write_lock = asyncio.Lock()
        self._writes: set[asyncio.Task[Any]] = set()

    @classmethod
    async def open(cls, url: str, base_dir: Path) -> SQLiteStore:
        path = sqlite_path(url, base_dir)
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        db = await _connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=10000")
            await _migrate(db)
            reader = None
            if isinstance(path, Path):
                reader = await _connect(path)
                await reader.execute("PRAGMA busy_timeout=10000")
        except BaseException:
            await db.close()
            raise
        return cls(db, reader)

    async def _transaction(self, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``work`` inside ``BEGIN IMMEDIATE`` … ``COMMIT`` (rollback on error), alone,
        to the end even if the caller is cancelled."""

        async def run() -> Any:
            async with self._write_lock:
                await self.db.execute("BEGIN IMMEDIATE")
                try:
                    result = await work()
                    await self.db.execute("COMMIT")
                    return result
                except BaseException:
                    await self.db.execute("ROLLBACK")
                    raise

        task = asyncio.get_running_loop().create_task(run())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return await asyncio.shield(task)

    # --- settings ---------------------------------------------------------------------------

    async def get_setting(self, key: str) -> Any | None:
        row = await _one(self.reader, "SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(row[0]) if row else None

    async def get_settings(self, keys: Iterable[str]) -> dict[str, Any]:
        names = list(keys)
        marks = ",".join("?" * len(names))
        rows = await _all(self.reader, f"SELECT key, value FROM settings WHERE key IN ({marks})",
                          names)
        return {k: json.loads(v) for k, v in rows}

    async def set_setting(self, key: str, value: Any) -> None:
        encoded = None if value is None else _dumps(value)

        async def work() -> None:
            if encoded is None:
                await self.db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                await self.db.execute(
                    "INSERT INTO settings(key, value) VALUES(?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, encoded))

        await self._transaction(work)

    # --- conversations ----------------------------------------------------------------------

    async def _append(self, conversation_id: str, messages: list[StoredMessage], *,
                      character_id: str | None, opening: list[StoredMessage], now: float
                      ) -> tuple[int, bool]:
        rows = [_message_row(conversation_id, m) for m in messages]
        opening_rows = [_message_row(conversation_id, m) for m in opening]

        async def work() -> tuple[int, bool]:
            # One statement creates the conversation or bumps it: a new one is version 1.
            row = await _one(
                self.db,
                "INSERT INTO conversations(id, character_id, created_at, updated_at, version, "
                "character_ids) VALUES(?, ?, ?, ?, 1, ?) ON CONFLICT(id) DO UPDATE SET "
                "updated_at = excluded.updated_at, version = version + 1 RETURNING version",
                (conversation_id, character_id, now, now,
                 _dumps([character_id]) if character_id else None))
            version = int(row[0]) if row else 1
            opened = opening_rows
            if opened and version > 1:
                row = await _one(self.db, "SELECT EXISTS (SELECT 1 FROM messages WHERE "
                                          "conversation_id = ?)", (conversation_id,))
                if row and row[0]:
                    opened = []
            await self.db.executemany(INSERT_MESSAGE, opened + rows)
            return version, bool(opened)

        result: tuple[int, bool] = await self._transaction(work)
        return result

    async def _create(self, conv: Conversation, state: dict[str, Any]) -> None:
        state_rows = _state_rows(conv.id, state)

        async def work() -> None:
            if await _one(self.db, "SELECT 1 FROM conversations WHERE id = ?", (conv.id,)):
                raise ConversationExists(conv.id)
            await self._insert(conv)
            await self.db.execute("DELETE FROM conversation_state WHERE conversation_id = ?",
                                  (conv.id,))
            await self.db.executemany(
                "INSERT INTO conversation_state(conversation_id, key, value) VALUES(?, ?, ?)",
                state_rows)

        await self._transaction(work)

    async def _insert(self, conv: Conversation) -> None:
        await self.db.execute(
            "INSERT INTO conversations(id, character_id, created_at, updated_at, version, "
            "character_ids, reply_order, title, branched_from) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conv.id, conv.character_id, conv.created_at, conv.updated_at, conv.version,
             _dumps(conv.character_ids), conv.reply_order, conv.title,
             _json_or_none(conv.branched_from)))
        await self.db.executemany(INSERT_MESSAGE,
                                  [_message_row(conv.id, m) for m in conv.messages])

    async def _load(self, conversation_id: str) -> Conversation | None:
        return await self._read(self.reader, conversation_id)

    async def _version(self, conversation_id: str) -> int | None:
        row = await _one(self.reader, "SELECT version FROM conversations WHERE id = ?",
                         (conversation_id,))
        return int(row[0]) if row else None

    async def _read(self, db: aiosqlite.Connection, conversation_id: str
                    ) -> Conversation | None:
        """The head, then its messages. Two statements: a write may commit between them,
        so the messages may be newer than the head's ``version`` says — never older, so
        an edit based on this read can only be refused as stale, never applied over a
        change it did not see (and the cache keeps only a read whose version held)."""
        head = await _one(db, READ_HEAD, (conversation_id,))
        if head is None:
            return None
        rows = await _all(db, READ_MESSAGES, (conversation_id,))
        return _head(head, [_message(r) for r in rows])

    async def list_conversations(
        self, *, character_id: str | None = None, limit: int = 50, offset: int = 0,
    ) -> list[ConversationSummary]:
        where, params = "", [limit, offset]
        if character_id is not None:
            where = ("WHERE c.character_id = ? OR EXISTS (SELECT 1 FROM "
                     "json_each(c.character_ids) WHERE json_each.value = ?)")
            params = [character_id, character_id, limit, offset]
        rows = await _all(
            self.reader,
            f"SELECT {HEAD_COLUMNS}, "
            "(SELECT COUNT(*) FROM messages WHERE conversation_id = c.id), "
            f"{MESSAGE_COLUMNS} FROM conversations c "
            "LEFT JOIN messages m ON m.id = (SELECT MAX(id) FROM messages "
            "WHERE conversation_id = c.id) "
            f"{where} ORDER BY c.updated_at DESC, c.id LIMIT ? OFFSET ?", params)
        out = []
        for r in rows:
            head = _head(r[:9], [])
            last = _message(r[10:]) if r[10] is not None else None
            out.append(ConversationSummary(head.id, head.character_id, head.character_ids,
                                           head.title, head.created_at, head.updated_at,
                                           head.version, int(r[9]), last))
        return out

    async def _delete(self, conversation_id: str) -> bool:
        async def work() -> bool:
            await self.db.execute("DELETE FROM conversation_state WHERE conversation_id = ?",
                                  (conversation_id,))
            cur = await self.db.execute("DELETE FROM conversations WHERE id = ?",
                                        (conversation_id,))
            return (cur.rowcount or 0) > 0

        return bool(await self._transaction(work))

    # --- state --------------------------------------------------------------------------------

    async def get_state(self, conversation_id: str) -> dict[str, Any]:
        rows = await _all(self.reader,
                          "SELECT key, value FROM conversation_state WHERE conversation_id = ?",
                          (conversation_id,))
        return {k: json.loads(v) for k, v in rows}

    async def update_state(self, conversation_id: str, changes: dict[str, Any]) -> None:
        deleted = [(conversation_id, k) for k, v in changes.items() if v is None]
        rows = _state_rows(conversation_id, changes)
        if not deleted and not rows:
            return

        async def work() -> None:
            await self.db.executemany(
                "DELETE FROM conversation_state WHERE conversation_id = ? AND key = ?", deleted)
            await self.db.executemany(
                "INSERT INTO conversation_state(conversation_id, key, value) VALUES(?, ?, ?) "
                "ON CONFLICT(conversation_id, key) DO UPDATE SET value = excluded.value", rows)

        await self._transaction(work)

    # --- editing --------------------------------------------------------------------------

    async def _current(self, conversation_id: str) -> Conversation:
        """The conversation inside a write transaction: from the cache when it is at the
        stored version (nothing can commit meanwhile), else read."""
        head = await _one(self.db, READ_HEAD, (conversation_id,))
        if head is None:
            raise ConversationNotFound(conversation_id)
        cached = self._cached(conversation_id, int(head[4]))
        if cached is not None:
            return cached
        rows = await _all(self.db, READ_MESSAGES, (conversation_id,))
        return _head(head, [_message(r) for r in rows])

    async def _transact(self, conversation_id: str, edit: Edit,
                        expected_version: int | None) -> Conversation:
        async def work() -> Conversation:
            conv = await self._current(conversation_id)
            check_version(conv, expected_version)
            change = edit(conv)
            now = time.time()
            change.append = stamp(change.append, now)
            # Messages are addressed by their id (``uid``), unique in a conversation.
            await self.db.executemany(
                "UPDATE messages SET role = ?, content = ?, status = ?, created_at = ?, "
                "meta = ?, uid = ?, swipes = ?, swipe_index = ? "
                "WHERE conversation_id = ? AND uid = ?",
                [(*_message_row(conversation_id, m)[1:], conversation_id,
                  conv.messages[index].id) for index, m in change.replace.items()])
            if change.truncate is not None and change.truncate < len(conv.messages):
                await self.db.execute(
                    "DELETE FROM messages WHERE conversation_id = ? AND id >= (SELECT id FROM "
                    "messages WHERE conversation_id = ? AND uid = ?)",
                    (conversation_id, conversation_id, conv.messages[change.truncate].id))
            await self.db.executemany(INSERT_MESSAGE, [_message_row(conversation_id, m)
                                                       for m in change.append])
            after = change.apply(conv, now)
            await self.db.execute(
                "UPDATE conversations SET updated_at = ?, version = ?, character_id = ?, "
                "character_ids = ?, reply_order = ?, title = ? WHERE id = ?",
                (now, after.version, after.character_id, _dumps(after.character_ids),
                 after.reply_order, after.title, conversation_id))
            return after

        result: Conversation = await self._transaction(work)
        return result

    async def _branch(self, conversation_id: str, new_id: str, at: int,
                      expected_version: int | None) -> Conversation:
        async def work() -> Conversation:
            source = await self._current(conversation_id)
            check_version(source, expected_version)
            if await _one(self.db, "SELECT 1 FROM conversations WHERE id = ?", (new_id,)):
                raise ConversationExists(new_id)
            conv = branch_of(source, new_id, at, time.time())
            await self._insert(conv)
            await self.db.execute("DELETE FROM conversation_state WHERE conversation_id = ?",
                                  (new_id,))
            await self.db.execute(
                "INSERT INTO conversation_state(conversation_id, key, value) "
                "SELECT ?, key, value FROM conversation_state WHERE conversation_id = ?",
                (new_id, conversation_id))
            return conv

        result: Conversation = await self._transaction(work)
        return result

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self.reader is not self.db:
            await self.reader.close()
        await self.db.close()


def _state_rows(conversation_id: str, changes: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Encoded up front: a value that is not JSON fails before anything is written."""
    for key in changes:
        if not isinstance(key, str):
            raise TypeError(f"state keys are strings, not {type(key).__name__}")
    return [(conversation_id, k, _dumps(v)) for k, v in changes.items() if v is not None]


async def _migrate(db: aiosqlite.Connection) -> None:
    """Create the schema, or bring a schema-1 database to schema 2, in one transaction."""
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    if row and row[0] >= SCHEMA_VERSION:
        return
    await db.execute("BEGIN IMMEDIATE")
    try:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                await db.execute(statement)
        for table, columns in ADDED_COLUMNS.items():
            async with db.execute(f"PRAGMA table_info({table})") as cur:
                have = {r[1] for r in await cur.fetchall()}
            for name, ddl in columns:
                if name not in have:
                    await db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
        await db.execute("UPDATE messages SET uid = 'r' || id WHERE uid IS NULL")
        await db.execute(INDEXES)
        await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise
