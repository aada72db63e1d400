"""Semantic recall: message embeddings in SQLite with ``sqlite-vec``.

Messages are embedded through LiteLLM's ``aembedding`` (any embedding model it
speaks: OpenAI, Ollama, a local OpenAI-compatible server) after each turn, in the
background, and on start-up for what was stored before; the new message is
embedded on the turn itself (one embedding call on the path to the first token).
Vectors live in a database of their own beside the store's
(``companion.db`` -> ``companion.vectors.db``), in a ``vec0`` table keyed by the
message's row id: Python's own ``sqlite3`` cannot load extensions, so this file
is opened with ``pysqlite3`` (extra ``[semantic]``), and two SQLite libraries must
never open the same file. A hit is read back from the store, so a deleted
message is never recalled; an edited one keeps its old vector until re-embedded
(not yet: see docs/memory.md).
"""

from __future__ import annotations

import asyncio
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from companion_engine.memory.fts import RecallHit

if TYPE_CHECKING:
    from companion_engine.store.sqlite import SQLiteStore

BATCH = 64


class SemanticUnavailable(RuntimeError):
    """``sqlite-vec`` / ``pysqlite3`` are not installed, or the store is not SQLite."""


def _connect(path: Path) -> Any:
    try:
        import pysqlite3.dbapi2 as sqlite  # type: ignore[import-not-found]
        import sqlite_vec  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SemanticUnavailable("semantic recall needs sqlite-vec and pysqlite3: "
                                  "pip install 'companion-engine[semantic]'") from exc
    db = sqlite.connect(str(path), check_same_thread=False, isolation_level=None)
    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.enable_load_extension(False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    return db


def _pack(vector: list[float]) -> bytes:
    return struct.pack(f"{len(vector)}f", *vector)


class VectorIndex:
    """Embeddings of the SQLite store's messages, for nearest-neighbour recall."""

    def __init__(self, store: SQLiteStore, model: str, api_base: str | None = None,
                 api_key: str | None = None) -> None:
        self.store = store
        self.model, self.api_base, self.api_key = model, api_base, api_key
        self._db: Any = None
        self._lock = threading.Lock()
        self._filling: asyncio.Task[None] | None = None
        self._fill_lock = asyncio.Lock()
        self._dims: int | None = None

    async def _path(self) -> Path:
        async with self.store.db.execute("PRAGMA database_list") as cur:
            rows = await cur.fetchall()
        main = next((r[2] for r in rows if r[1] == "main"), "")
        if not main:
            raise SemanticUnavailable("semantic recall needs a database file (not :memory:)")
        return Path(main).with_suffix(".vectors.db")

    async def open(self) -> None:
        path = await self._path()
        self._db = await asyncio.to_thread(_connect, path)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        from companion_engine.llm import get_litellm

        litellm = await get_litellm()
        kwargs: dict[str, Any] = {}
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        response = await litellm.aembedding(model=self.model, input=texts, **kwargs)
        data = response["data"] if isinstance(response, dict) else response.data
        items = sorted(data, key=lambda d: d["index"] if isinstance(d, dict) else d.index)
        return [list(d["embedding"] if isinstance(d, dict) else d.embedding) for d in items]

    def _run(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(self._db, *args)

    @staticmethod
    def _prepare(db: Any, model: str, dims: int) -> int:
        """Create the table for this model's dimension (a new model starts over);
        return the highest message row id already embedded."""
        row = db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
        if row is None or row[0] != f"{model}:{dims}":
            db.execute("DROP TABLE IF EXISTS vec_messages")
            db.execute(f"CREATE VIRTUAL TABLE vec_messages USING vec0(message_rowid integer "
                       f"primary key, embedding float[{dims}] distance_metric=cosine, "
                       f"character_id text, conversation_id text)")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (f"{model}:{dims}",))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('watermark', '0')")
        row = db.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _insert(db: Any, rows: list[tuple[int, bytes, str, str]], watermark: int) -> None:
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO vec_messages(message_rowid, embedding, "
                       "character_id, conversation_id) VALUES (?, ?, ?, ?)", rows)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('watermark', ?)", (str(watermark),))
        db.execute("COMMIT")

    async def fill(self) -> int:
        """Embed every stored message not embedded yet (oldest first); return how many."""
        async with self._fill_lock:
            done = 0
            while True:
                watermark = await self._watermark()
                async with self.store.reader.execute(
                        "SELECT m.id, m.content, m.conversation_id, c.character_id "
                        "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                        "WHERE m.id > ? ORDER BY m.id LIMIT ?", (watermark, BATCH)) as cur:
                    rows = await cur.fetchall()
                if not rows:
                    return done
                keep = [r for r in rows if r[1].strip()]
                vectors = await self.embed([r[1] for r in keep]) if keep else []
                if keep and self._dims is None:
                    self._dims = len(vectors[0])
                    await asyncio.to_thread(self._run, self._prepare, self.model, self._dims)
                await asyncio.to_thread(self._run, self._insert, [
                    (r[0], _pack(v), r[3] or "", r[2]) for r, v in zip(keep, vectors,
                                                                      strict=True)],
                    rows[-1][0])
                done += len(keep)

    async def _watermark(self) -> int:
        if self._dims is None:
            probe = await self.embed(["probe"])
            self._dims = len(probe[0])
        result: int = await asyncio.to_thread(self._run, self._prepare, self.model, self._dims)
        return result

    def fill_later(self) -> None:
        """Start ``fill`` in the background unless one is running."""
        if self._filling is not None and not self._filling.done():
            return

        async def run() -> None:
            try:
                count = await self.fill()
                if count:
                    logger.debug("memory: embedded {} message(s)", count)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("memory: embedding messages failed: {}: {}",
                               type(exc).__name__, exc)

        self._filling = asyncio.get_running_loop().create_task(run(), name="memory-embed")

    @staticmethod
    def _knn(db: Any, vector: bytes, k: int, key: str, value: str) -> list[tuple[int, float]]:
        rows = db.execute(f"SELECT message_rowid, distance FROM vec_messages WHERE embedding "
                          f"MATCH ? AND k = ? AND {key} = ?", (vector, k, value)).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    async def search(self, text: str, *, scope: str, character_id: str | None,
                     conversation_id: str | None, limit: int) -> list[RecallHit]:
        """The ``limit`` stored messages closest to ``text`` (cosine), closest first."""
        if self._dims is None:
            return []
        if scope == "character" and character_id:
            key, value = "character_id", character_id
        elif conversation_id:
            key, value = "conversation_id", conversation_id
        else:
            return []
        (vector,) = await self.embed([text])
        found = await asyncio.to_thread(self._run, self._knn, _pack(vector), limit, key, value)
        if not found:
            return []
        ids = [rowid for rowid, _ in found]
        async with self.store.reader.execute(
                "SELECT id, conversation_id, uid, role, content, created_at FROM messages "
                f"WHERE id IN ({','.join('?' * len(ids))}) AND status != 'error' "
                "AND role IN ('user', 'assistant')", ids) as cur:
            rows = {r[0]: r for r in await cur.fetchall()}
        return [RecallHit(conversation_id=rows[i][1], message_id=rows[i][2] or f"r{i}",
                          role=rows[i][3], content=rows[i][4], created_at=rows[i][5],
                          score=distance, source="semantic", rowid=i)
                for i, distance in found if i in rows]

    async def aclose(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            await asyncio.gather(self._filling, return_exceptions=True)
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)
