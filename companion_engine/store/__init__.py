"""Persistent state: conversations, their per-conversation state, and small settings.

SQLite by default; Redis when several instances share one state. ``store.base``
holds the contract (``Store``) and the editing rules both backends share.
"""

from __future__ import annotations

from pathlib import Path

from companion_engine.store.base import (
    CACHE_MESSAGES,
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


async def open_store(url: str, base_dir: Path, *,
                     cache_messages: int = CACHE_MESSAGES) -> Store:
    """Open the store named by ``store.url`` (``sqlite:///path`` or ``redis://...``);
    ``cache_messages`` is ``store.cache_messages``."""
    store: Store
    if url.startswith("sqlite:"):
        from companion_engine.store.sqlite import SQLiteStore

        store = await SQLiteStore.open(url, base_dir)
    elif url.startswith(("redis://", "rediss://", "unix://")):
        from companion_engine.store.redis import RedisStore

        store = await RedisStore.open(url)
    else:
        raise ValueError(f"store.url: unsupported scheme in {url!r} (use sqlite:/// or "
                         "redis://)")
    store.cache_messages = cache_messages
    return store

