"""Standalone lorebook files (SillyTavern World Info JSON, ``lorebook_v3``, a V2 book).

Each file is read again only when its modification time or size changes; the
same ``Lorebook`` object is returned otherwise, so its compiled form stays
cached. Reading is blocking: call ``load`` from a thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

from loguru import logger

from companion_engine import jsoninput
from companion_engine.lorebook.entry import Lorebook, Warnings, from_object

#: A lorebook file larger than this is refused (with a warning), not read.
MAX_FILE_BYTES = 64 * 1024 * 1024


class LorebookFiles:
    """Reads lorebook files and keeps the last good read of each."""

    def __init__(self) -> None:
        self._books: dict[Path, tuple[tuple[int, int], Lorebook]] = {}
        self._lock = threading.Lock()

    def load(self, paths: list[Path], *, spec: bool = False) -> list[Lorebook]:
        books = []
        for path in paths:
            book = self._load_one(path, spec)
            if book is not None:
                books.append(book)
        return books

    def _load_one(self, path: Path, spec: bool) -> Lorebook:
        try:
            st = path.stat()
        except OSError as exc:
            return self._failed(path, (-1, -1), f"cannot read lorebook file: {exc.strerror}")
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._books.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if st.st_size > MAX_FILE_BYTES:
            return self._failed(path, stamp, f"lorebook file is {st.st_size:,} bytes; the limit "
                                             f"is {MAX_FILE_BYTES:,}")
        try:
            data = jsoninput.loads(path.read_bytes())
        except OSError as exc:
            return self._failed(path, stamp, f"cannot read lorebook file: {exc.strerror}")
        except jsoninput.JSONInputError as exc:  # downloaded files are untrusted input too
            return self._failed(path, stamp, f"cannot parse lorebook file: {exc.reason}")
        book = from_object(data, path.stem, spec=spec)
        for message in book.warnings:
            logger.warning("lorebook file {}: {}", path, message)
        with self._lock:
            self._books[path] = (stamp, book)
        return book

    def _failed(self, path: Path, stamp: tuple[int, int], message: str) -> Lorebook:
        """An empty book carrying the warning; logged once per file version."""
        with self._lock:
            cached = self._books.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            warnings = Warnings()
            warnings.add(str(path), message)
            book = Lorebook(name=path.stem, entries=[], warnings=warnings)
            self._books[path] = (stamp, book)
        logger.warning("lorebook file {}: {}", path, message)
        return book
