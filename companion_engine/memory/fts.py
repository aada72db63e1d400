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
import sqlite3
import threading
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
MATCH_BUDGET = 600

#: The index's best candidates, ranked by BM25 on its own (FTS5's fast path).
_TOP = ("SELECT rowid, bm25(memory_fts) AS score FROM memory_fts WHERE memory_fts MATCH ? "
        "ORDER BY score LIMIT ?")
CANDIDATES = 100
#: The same, within some conversations (when the best overall are mostly elsewhere).
_TOP_IN = ("SELECT rowid, bm25(memory_fts) AS score FROM memory_fts WHERE memory_fts MATCH ? "
           "AND rowid IN (SELECT id FROM messages WHERE conversation_id IN ({marks})) "
           "ORDER BY score LIMIT ?")
_ROWS = ("SELECT conversation_id, uid, id, role, content, created_at, meta, status "
         "FROM messages WHERE id IN ({marks})")
#: Conversations a character takes part in (group chats list it in ``character_ids``).
_OF_CHARACTER = ("SELECT id FROM conversations WHERE character_id = ?1 "
                 "OR (character_ids IS NOT NULL AND character_ids LIKE ?2)")
#: Stems and document frequencies are cached: the frequencies only steer which words
#: are searched for, so a minute-old count is as good as a fresh one.
DF_TTL_S = 60.0
CACHE_WORDS = 50_000


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
        self._thread_lock = threading.Lock()
        self._ready = False
        self._conn: sqlite3.Connection | None = None
        self._stems: dict[str, str] = {}
        self._df: dict[str, tuple[int, float]] = {}

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

    async def open(self) -> None:
        """A read connection of the index's own (the whole search is one thread hop on it);
        an in-memory store is searched through the store's connection instead."""
        async with self.store.db.execute("PRAGMA database_list") as cur:
            main = next((r[2] for r in await cur.fetchall() if r[1] == "main"), "")
        if main:
            self._conn = await asyncio.to_thread(_reader, main)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.close)

    async def search(self, terms: list[str], *, scope: Scope, character_id: str | None,
                     conversation_id: str | None, limit: int) -> list[RecallHit]:
        """The best ``limit`` messages matching any of ``terms`` (BM25), best first.

        Only the rarest terms are searched for (``choose``); the index ranks its best
        candidates alone (the fast path of FTS5), then they are read from the store
        and kept if they are in scope."""
        if not terms or limit <= 0:
            return []
        if scope == "character" and character_id:
            key = character_id
        elif conversation_id:
            scope, key = "conversation", conversation_id
        else:
            return []
        if self._conn is not None:
            rows = await asyncio.to_thread(self._search_sync, self._conn, terms, scope, key,
                                           limit)
        else:  # :memory: -- the store's own connection
            rows = await self._search_async(terms, scope, key, limit)
        return [RecallHit(conversation_id=r[0], message_id=r[1] or f"r{r[2]}", role=r[3],
                          content=r[4], created_at=r[5], score=score,
                          meta=json.loads(r[6]) if r[6] else {}, rowid=r[2])
                for r, score in rows]

    def _known(self, terms: list[str]) -> tuple[dict[int, str], list[str], list[str]]:
        """Cached stems of ``terms``, the words whose stem is unknown, the stems whose
        document frequency is unknown or old."""
        now = time.monotonic()
        stems = {i: self._stems[w] for i, w in enumerate(terms) if w in self._stems}
        unknown = [w for w in terms if w not in self._stems]
        stale = [st for st in set(stems.values())
                 if now - self._df.get(st, (0, -1e9))[1] > DF_TTL_S]
        return stems, unknown, stale

    def _learn(self, words: list[str], stems: dict[int, str] | None = None,
               df: dict[str, int] | None = None, asked: list[str] | None = None) -> None:
        if len(self._stems) > CACHE_WORDS:
            self._stems.clear()
            self._df.clear()
        for i, stem in (stems or {}).items():
            self._stems[words[i]] = stem
        now = time.monotonic()
        for stem in asked or ():
            self._df[stem] = ((df or {}).get(stem, 0), now)

    def _finish(self, terms: list[str]) -> list[str]:
        stems = {i: self._stems[w] for i, w in enumerate(terms) if w in self._stems}
        return choose(terms, stems, {st: n for st, (n, _) in self._df.items()})

    def _search_sync(self, conn: sqlite3.Connection, terms: list[str], scope: str, key: str,
                     limit: int) -> list[tuple[Any, float]]:
        with self._thread_lock:
            _, unknown, _ = self._known(terms)
            if unknown:
                if not self._ready:
                    for statement in _STEMMER:
                        conn.execute(statement)
                    self._ready = True
                conn.execute("DELETE FROM temp.memory_query")
                conn.executemany("INSERT INTO temp.memory_query(rowid, word) VALUES (?, ?)",
                                 list(enumerate(unknown)))
                self._learn(unknown, {int(d): t for d, t in conn.execute(
                    "SELECT doc, term FROM temp.memory_query_vocab")})
            _, _, stale = self._known(terms)
            if stale:
                df = dict(conn.execute("SELECT term, doc FROM memory_fts_vocab WHERE term IN "
                                       f"({','.join('?' * len(stale))})", stale).fetchall())
                self._learn([], df=df, asked=stale)
            chosen = self._finish(terms)
            if not chosen:
                return []
            query = fts_query(chosen)
            allowed = self._scope(conn.execute, scope, key)
            if not allowed:
                return []
            want = max(CANDIDATES, limit * 5)
            top = conn.execute(_TOP, (query, want)).fetchall() if scope == "character" else []
            out = _ranked(top, self._rows(conn, top), allowed, limit)
            if len(out) < limit and (scope != "character" or len(top) == want):
                marks = ",".join("?" * len(allowed))  # the best are elsewhere: look within
                top = conn.execute(_TOP_IN.format(marks=marks),
                                   (query, *sorted(allowed), want)).fetchall()
                out = _ranked(top, self._rows(conn, top), allowed, limit)
        return out

    @staticmethod
    def _rows(conn: sqlite3.Connection, top: list[Any]) -> dict[int, Any]:
        if not top:
            return {}
        ids = [r[0] for r in top]
        return {r[2]: r for r in conn.execute(_ROWS.format(marks=",".join("?" * len(ids))),
                                              ids)}

    def _scope(self, execute: Any, scope: str, key: str) -> set[str]:
        if scope == "conversation":
            return {key}
        rows = execute(_OF_CHARACTER, (key, f'%"{key}"%')).fetchall()
        return {r[0] for r in rows}

    async def _search_async(self, terms: list[str], scope: str, key: str, limit: int
                            ) -> list[tuple[Any, float]]:
        db = self.store.reader
        async with self._lock:
            _, unknown, _ = self._known(terms)
            if unknown:
                if not self._ready:
                    for statement in _STEMMER:
                        await db.execute(statement)
                    self._ready = True
                await db.execute("DELETE FROM temp.memory_query")
                await db.executemany("INSERT INTO temp.memory_query(rowid, word) VALUES (?, ?)",
                                     list(enumerate(unknown)))
                async with db.execute("SELECT doc, term FROM temp.memory_query_vocab") as cur:
                    self._learn(unknown, {int(d): t for d, t in await cur.fetchall()})
            _, _, stale = self._known(terms)
            if stale:
                async with db.execute("SELECT term, doc FROM memory_fts_vocab WHERE term IN "
                                      f"({','.join('?' * len(stale))})", stale) as cur:
                    self._learn([], df=dict(await cur.fetchall()), asked=stale)
            chosen = self._finish(terms)
        if not chosen:
            return []
        query = fts_query(chosen)
        if scope == "conversation":
            allowed = {key}
        else:
            async with db.execute(_OF_CHARACTER, (key, f'%"{key}"%')) as cur:
                allowed = {r[0] for r in await cur.fetchall()}
        if not allowed:
            return []
        marks = ",".join("?" * len(allowed))
        async with db.execute(_TOP_IN.format(marks=marks),
                              (query, *sorted(allowed), max(CANDIDATES, limit * 5))) as cur:
            top = list(await cur.fetchall())
        rows: dict[int, Any] = {}
        if top:
            ids = [r[0] for r in top]
            async with db.execute(_ROWS.format(marks=",".join("?" * len(ids))), ids) as cur:
                rows = {r[2]: r for r in await cur.fetchall()}
        return _ranked(top, rows, allowed, limit)


def _ranked(top: list[Any], rows: dict[int, Any], allowed: set[str], limit: int
            ) -> list[tuple[Any, float]]:
    out: list[tuple[Any, float]] = []
    for rowid, score in top:
        row = rows.get(rowid)
        if row is None or row[0] not in allowed or row[7] == "error" \
                or row[3] not in ("user", "assistant"):
            continue
        out.append((row, float(score)))
        if len(out) >= limit:
            break
    return out


def _reader(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def choose(terms: list[str], stems: dict[int, str], df: dict[str, int]) -> list[str]:
    """The most telling of ``terms``: the rarest in the index (by their stems), as many as fit
    ``MATCH_BUDGET`` matches together; words the index does not hold are dropped."""
    ranked = sorted((int(df[stem]), i) for i, stem in stems.items() if stem in df)
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


def open_index(store: Store) -> MessageIndex | None:
    """The message index of ``store``, or None when the backend has none (Redis)."""
    from companion_engine.store.sqlite import SQLiteStore

    return MessageIndex(store) if isinstance(store, SQLiteStore) else None
