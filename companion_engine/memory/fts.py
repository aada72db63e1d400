"""The full-text index of stored messages, for recall: SQLite FTS5 with BM25 ranking.

The index is an FTS5 table over the SQLite store's own ``messages`` table
(``content='messages'``), kept in step by triggers on insert, update and delete:
whatever writes messages — a turn, an edit, a deleted tail, a branch, a deleted
conversation — the index follows in the same transaction, with no code of ours
on the write path. It is created (and filled from what is already stored) the
first time a profile uses recall. Words are stemmed (Porter) and diacritics
folded. The Redis store has no such index: ``open_index`` returns ``None`` and
the ``memory`` stage says at start-up that recall is off there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

from companion_engine.memory.terms import fts_query

if TYPE_CHECKING:
    from companion_engine.store import Store
    from companion_engine.store.sqlite import SQLiteStore

Scope = Literal["character", "conversation"]

SCHEMA = (
    """CREATE VIRTUAL TABLE IF NOT EXISTS memory_fts USING fts5(
        content, content='messages', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER IF NOT EXISTS memory_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO memory_fts(rowid, content) VALUES (new.id, new.content);
    END""",
    """CREATE TRIGGER IF NOT EXISTS memory_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO memory_fts(memory_fts, rowid, content)
        VALUES ('delete', old.id, old.content);
    END""",
    """CREATE TRIGGER IF NOT EXISTS memory_fts_update AFTER UPDATE OF content ON messages
    BEGIN
        INSERT INTO memory_fts(memory_fts, rowid, content)
        VALUES ('delete', old.id, old.content);
        INSERT INTO memory_fts(rowid, content) VALUES (new.id, new.content);
    END""",
)

_SEARCH = """
SELECT m.conversation_id, m.uid, m.id, m.role, m.content, m.created_at, m.meta,
       bm25(memory_fts) AS score
FROM memory_fts JOIN messages m ON m.id = memory_fts.rowid
WHERE memory_fts MATCH ? AND m.status != 'error' AND m.role IN ('user', 'assistant')
  AND {scope}
ORDER BY score LIMIT ?
"""
_IN_CONVERSATION = "m.conversation_id = ?"
_OF_CHARACTER = """m.conversation_id IN (
    SELECT c.id FROM conversations c WHERE c.character_id = ?1
    UNION SELECT c.id FROM conversations c, json_each(c.character_ids) j
          WHERE c.character_ids IS NOT NULL AND j.value = ?1)"""


@dataclass(slots=True)
class RecallHit:
    """One stored message found for a query."""

    conversation_id: str
    message_id: str
    role: str
    content: str
    created_at: float
    #: BM25 (lower is better) for ``fts``; cosine distance for ``semantic``.
    score: float
    source: Literal["fts", "semantic"] = "fts"
    meta: dict[str, Any] = field(default_factory=dict)
    #: The store's row id (orders messages of one conversation).
    rowid: int = 0


class MessageIndex:
    """Full-text search over the SQLite store's messages."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    async def ensure(self) -> bool:
        """Create the index and its triggers if missing, filled from the stored messages.

        Returns True when it was created now. One transaction, under the store's write
        lock: no message can be written between the fill and the triggers.
        """
        store = self.store

        async def work() -> bool:
            async with store.db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'memory_fts'") as cur:
                exists = await cur.fetchone() is not None
            for statement in SCHEMA:
                await store.db.execute(statement)
            if not exists:
                await store.db.execute("INSERT INTO memory_fts(memory_fts) VALUES ('rebuild')")
            return not exists

        began = time.perf_counter()
        created: bool = await store._transaction(work)
        if created:
            logger.info("memory: full-text index of stored messages created in {:.0f} ms",
                        (time.perf_counter() - began) * 1000)
        return created

    async def search(self, terms: list[str], *, scope: Scope, character_id: str | None,
                     conversation_id: str | None, limit: int) -> list[RecallHit]:
        """The best ``limit`` messages matching any of ``terms`` (BM25), best first."""
        if not terms or limit <= 0:
            return []
        if scope == "character" and character_id:
            sql, key = _SEARCH.format(scope=_OF_CHARACTER.replace("?1", "?3")), character_id
        elif conversation_id:
            sql, key = _SEARCH.format(scope=_IN_CONVERSATION.replace("?", "?3")), conversation_id
        else:
            return []
        sql = sql.replace("MATCH ?", "MATCH ?1").replace("LIMIT ?", "LIMIT ?2")
        async with self.store.reader.execute(sql, (fts_query(terms), limit, key)) as cur:
            rows = await cur.fetchall()
        return [RecallHit(conversation_id=r[0], message_id=r[1] or f"r{r[2]}", role=r[3],
                          content=r[4], created_at=r[5], score=r[7],
                          meta=json.loads(r[6]) if r[6] else {}, rowid=r[2]) for r in rows]


def open_index(store: Store) -> MessageIndex | None:
    """The message index of ``store``, or None when the backend has none (Redis)."""
    from companion_engine.store.sqlite import SQLiteStore

    return MessageIndex(store) if isinstance(store, SQLiteStore) else None
