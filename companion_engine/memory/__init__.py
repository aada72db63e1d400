"""Long-term memory: what a companion remembers beyond the history budget.

``fts`` keeps a full-text index of every stored message (SQLite FTS5, BM25
ranking, no model needed) beside the SQLite store; ``terms`` turns a message
into a search query; ``vectors`` keeps message embeddings (``sqlite-vec``) for
semantic recall; ``summary`` writes the running summary of what fell out of the
history, in the background. The ``memory`` prompt stage
(``companion_engine.builtin.memory``) ties them to a turn; see ``docs/memory.md``.
"""

from companion_engine.memory.fts import MessageIndex, RecallHit, open_index
from companion_engine.memory.terms import query_terms

__all__ = ["MessageIndex", "RecallHit", "open_index", "query_terms"]
