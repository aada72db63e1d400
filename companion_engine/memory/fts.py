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

import asyncio
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
    "CREATE VIRTUAL TABLE IF NOT EXISTS memory_fts_vocab USING fts5vocab(memory_fts, 'row')",
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

#: A per-connection scratch table with the index's tokenizer: the stems of the query words.
_STEMMER = (
    """CREATE VIRTUAL TABLE IF NOT EXISTS temp.memory_query USING fts5(
        word, tokenize='porter unicode61 remove_diacritics 2')""",
    "CREATE VIRTUAL TABLE IF NOT EXISTS temp.memory_query_vocab "
    "USING fts5vocab(temp, memory_query, 'instance')",
)
#: Messages the chosen words may match together, at most: BM25 scores every match, so
#: this bounds the work of one search (common words are left out first; they say little).
MATCH_BUDGET = 1000

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
        self._lock = asyncio.Lock()
        self._ready = False

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

    async def choose(self, terms: list[str]) -> list[str]:
        """The most telling of ``terms``: the rarest in the index (as their stems), as many as
        fit ``MATCH_BUDGET`` matches together; words the index does not hold are dropped."""
        db = self.store.reader
        async with self._lock:
            if not self._ready:
                for statement in _STEMMER:
                    await db.execute(statement)
                self._ready = True
            await db.execute("DELETE FROM temp.memory_query")
            await db.executemany("INSERT INTO temp.memory_query(rowid, word) VALUES (?, ?)",
                                 list(enumerate(terms)))
            async with db.execute("SELECT doc, term FROM temp.memory_query_vocab") as cur:
                stems = {int(doc): term for doc, term in await cur.fetchall()}
        if not stems:
            return []
        # One lookup per distinct stem (an IN list): fts5vocab has no index to join on.
        wanted = sorted(set(stems.values()))
        async with db.execute("SELECT term, doc FROM memory_fts_vocab WHERE term IN "
                              f"({','.join('?' * len(wanted))})", wanted) as cur:
            df = {term: int(n) for term, n in await cur.fetchall()}
        ranked = sorted((df[stem], i) for i, stem in stems.items() if stem in df)
        chosen: list[int] = []
        total = 0
        seen: set[str] = set()
        for n, i in ranked:
            if stems[i] in seen:
                continue
            if total + n > MATCH_BUDGET and (chosen or n > 2 * MATCH_BUDGET):
                break
            seen.add(stems[i])
            chosen.append(i)
            total += n
        return [terms[i] for i in sorted(chosen)]

    async def search(self, terms: list[str], *, scope: Scope, character_id: str | None,
                     conversation_id: str | None, limit: int) -> list[RecallHit]:
        """The best ``limit`` messages matching any of ``terms`` (BM25), best first; only the
        rarest terms are searched for (``choose``)."""
        if not terms or limit <= 0:
            return []
        terms = await self.choose(terms)
        if not terms:
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
