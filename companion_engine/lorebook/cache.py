"""A small LRU of compiled lore, keyed by the identity of the lorebooks and the settings.

A card's book is identified by its object: the character store makes a new
``Character`` (and book) when a card file changes, and a reloaded lorebook
file is a new ``Lorebook``. The cache holds the objects it was built from, so
an ``id()`` can never be reused for a different book while its entry lives.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from companion_engine.lorebook.compile import CompiledLore

DEFAULT_SIZE = 16
#: Entries kept compiled at most, summed over cached items (~3 KB each); the newest stays.
MAX_ENTRIES = 50_000


class LoreCache:
    def __init__(self, size: int = DEFAULT_SIZE, max_entries: int = MAX_ENTRIES) -> None:
        self.size = size
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, tuple[tuple[Any, ...], CompiledLore]] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0

    @staticmethod
    def key(books: tuple[Any, ...], settings: Hashable) -> Hashable:
        return (tuple(id(b) for b in books), settings)

    def get(self, books: tuple[Any, ...], settings: Hashable) -> CompiledLore | None:
        key = self.key(books, settings)
        with self._lock:
            item = self._items.get(key)
            if item is None or any(a is not b for a, b in zip(item[0], books, strict=True)):
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, books: tuple[Any, ...], settings: Hashable, lore: CompiledLore) -> None:
        with self._lock:
            self.compiles += 1
            self._items[self.key(books, settings)] = (books, lore)
            self._items.move_to_end(self.key(books, settings))
            while len(self._items) > 1 and (
                    len(self._items) > self.size
                    or sum(len(v[1].entries) for v in self._items.values()) > self.max_entries):
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
