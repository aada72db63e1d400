"""Persistent state: conversations, their per-conversation state, and small settings.

SQLite by default; Redis when several instances share one state. ``store.base``
holds the contract (``Store``) and the editing rules both backends share.
"""

from __future__ import annotations

from pathlib import Path

from companion_engine.store.base import (
    REPLY_ORDERS,
    Conversation,
    ConversationExists,
    ConversationNotFound,
    ConversationSummary,
    InvalidEdit,
    MessageNotFound,
    ReplyOrder,
    Store,
    StoredMessage,
    StoreError,
    Swipe,
    VersionConflict,
)

__all__ = [
    "REPLY_ORDERS",
    "Conversation",
    "ConversationExists",
    "ConversationNotFound",
    "ConversationSummary",
    "InvalidEdit",
    "MessageNotFound",
    "ReplyOrder",
    "Store",
    "StoreError",
    "StoredMessage",
    "Swipe",
    "VersionConflict",
    "open_store",
]


async def open_store(url: str, base_dir: Path) -> Store:
    """Open the store named by ``store.url`` (``sqlite:///path`` or ``redis://...``)."""
    if url.startswith("sqlite:"):
        from companion_engine.store.sqlite import SQLiteStore

        return await SQLiteStore.open(url, base_dir)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from companion_engine.store.redis import RedisStore

        return await RedisStore.open(url)
    raise ValueError(f"store.url: unsupported scheme in {url!r} (use sqlite:/// or redis://)")
