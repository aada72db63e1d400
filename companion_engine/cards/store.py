"""The character store: the ``characters/`` folder, read into memory.

The folder is the source of truth. Cards dropped in by hand appear on the next
``rescan`` (hot reload calls it on file changes); uploads, creates and updates
are written there atomically (temp file + rename), so a crash never leaves half
a card. Each file keeps its id for as long as it exists; a file whose content
changes yields a *new* ``Character`` object, so caches keyed on the object
invalidate themselves. File I/O and parsing run in a thread, never on the loop.

Only names the store listed itself or built as ``<id>.<ext>`` are ever opened,
and both are checked to resolve inside the folder (symlinks included).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loguru import logger

from companion_engine.cards import export, png
from companion_engine.cards.errors import CardError, Issue
from companion_engine.cards.formats import Container, ParsedCard, parse_card, read_yaml_card
from companion_engine.cards.ids import is_valid_id, path_in, unique_id
from companion_engine.cards.model import Character
from companion_engine.errors import Problem
from companion_engine.store import Store

ACTIVE_SETTING = "active_character"
SUFFIXES: dict[str, Container] = {".json": "json", ".png": "png", ".yaml": "yaml",
                                  ".yml": "yaml"}
EXTENSION: dict[Container, str] = {"json": ".json", "png": ".png", "yaml": ".yaml"}
#: Largest card file read from the folder (uploads have their own, smaller cap).
MAX_FILE_BYTES = 32 * 1024 * 1024

Signature = tuple[int, int]  # (mtime_ns, size): changes when the file does


@dataclass(slots=True)
class CardFile:
    """One card in the store: the character and the file it lives in."""

    character: Character
    path: Path
    container: Container
    warnings: list[Issue]
    signature: Signature

    @property
    def mtime(self) -> float:
        return self.signature[0] / 1e9


#: What one file scanned to: a card, a problem, or ``None`` for "unchanged since last scan".
Scanned = CardFile | Problem | None


class CharacterStore:
    """Characters by id, backed by one folder; the active id persisted in ``Store``."""

    def __init__(self, directory: Path, store: Store, default_id: str | None = None) -> None:
        self.directory = directory
        self.store = store
        #: The profile's ``character``; hot reload may change it.
        self.default_id = default_id
        #: Files that could not be read as cards, for ``companion check`` and ``/health``.
        self.problems: list[Problem] = []
        self._cards: dict[str, CardFile] = {}
        #: file name -> (signature, id or None); ids stay with their file across rescans.
        self._files: dict[str, tuple[Signature, str | None, Problem | None]] = {}
        self._active: str | None = None
        self._lock = asyncio.Lock()
        #: Called after a card was added, updated or deleted through the store (the engine
        #: tells other engines sharing the folder to rescan).
        self.on_change: Callable[[], Awaitable[None]] | None = None

    # --- reading ------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the active id and scan the folder."""
        value = await self.store.get_setting(ACTIVE_SETTING)
        self._active = value if is_valid_id(value) else None
        await self.rescan()

    def list(self) -> list[Character]:
        return [f.character for f in self._cards.values()]

    def files(self) -> list[CardFile]:
        return list(self._cards.values())

    def get(self, character_id: str) -> Character | None:
        card = self._cards.get(character_id)
        return card.character if card else None

    def file(self, character_id: str) -> CardFile | None:
        return self._cards.get(character_id)

    @property
    def active_id(self) -> str | None:
        """The chosen character if it still exists, else the profile default if it does."""
        for candidate in (self._active, self.default_id):
            if candidate is not None and candidate in self._cards:
                return candidate
        return None

    def active(self) -> Character | None:
        active_id = self.active_id
        return self.get(active_id) if active_id else None

    def adopt_active(self, value: object) -> None:
        """Take the active id another engine persisted (read from the shared store)."""
        self._active = value if isinstance(value, str) and is_valid_id(value) else None

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    async def set_active(self, character_id: str | None) -> None:
        """Persist the active character (``None``: back to the profile default)."""
        if character_id is not None and character_id not in self._cards:
            raise KeyError(character_id)
        await self.store.set_setting(ACTIVE_SETTING, character_id)
        self._active = character_id

    async def rescan(self) -> set[str]:
        """Re-read the folder; returns the ids added, removed or changed."""
        async with self._lock:
            known = {name: sig for name, (sig, _, _) in self._files.items()}
            scanned = await asyncio.to_thread(_scan, self.directory, known)
            return self._apply_scan(scanned)

    def _apply_scan(self, scanned: dict[str, tuple[Signature, Scanned]]) -> set[str]:
        before = dict(self._cards)
        files: dict[str, tuple[Signature, str | None, Problem | None]] = {}
        cards: dict[str, CardFile] = {}
        # Files that already had an id keep it; only then do new files pick free ones.
        reserved = {self._files[n][1] for n in scanned if n in self._files} - {None}
        pending: list[tuple[str, Signature, CardFile]] = []
        for name, (sig, result) in sorted(scanned.items()):
            old_id = self._files[name][1] if name in self._files else None
            if result is None:  # unchanged
                files[name] = self._files[name]
                if old_id is not None and old_id in before:
                    cards[old_id] = before[old_id]
                continue
            if isinstance(result, Problem):
                if name not in self._files or self._files[name][2] != result:
                    logger.warning("skipped character file {}", result)
                files[name] = (sig, old_id, result)
                continue
            if old_id is not None:
                files[name] = (sig, old_id, None)
                cards[old_id] = _with_identity(result, old_id)
            else:
                pending.append((name, sig, result))
        for name, sig, result in pending:
            new_id = unique_id([Path(name).stem, result.character.name],
                               lambda i: i in reserved or i in cards)
            reserved.add(new_id)
            files[name] = (sig, new_id, None)
            cards[new_id] = _with_identity(result, new_id)
        self._files, self._cards = files, cards
        self.problems = [p for _, _, p in files.values() if p is not None]
        changed = {i for i in before.keys() | cards.keys() if before.get(i) is not cards.get(i)}
        if not before:
            logger.info("loaded {} character(s) from {}", len(cards), self.directory)
        elif changed:
            logger.info("characters changed: {}", ", ".join(sorted(changed)))
        return changed

    # --- writing ------------------------------------------------------------------------------

    async def add(self, parsed: ParsedCard, *, raw: bytes | None = None,
                  name_hint: str | None = None) -> CardFile:
        """Store a new card as ``<id>.<ext>``: ``raw`` verbatim (an upload) or as written by us.

        The id comes from the card name, else ``name_hint`` (an upload's file name).
        """
        async with self._lock:
            taken = set(self._cards) | {i for _, i, _ in self._files.values() if i}
            # Names on disk too: a file placed by hand since the last scan is never overwritten.
            on_disk = await asyncio.to_thread(_listdir, self.directory)
            names = {n.lower() for n in (*self._files, *on_disk)}
            ext = EXTENSION[parsed.container]

            def is_taken(candidate: str) -> bool:
                return candidate in taken or any(candidate + s in names for s in SUFFIXES)

            new_id = unique_id([parsed.character.name, Path(name_hint or "").stem], is_taken)
            name = new_id + ext
            card = _with_identity(CardFile(parsed.character, self.directory / name,
                                           parsed.container, parsed.warnings, (0, 0)), new_id)
            data = raw if raw is not None else export.file_bytes(card.character, card.container)
            card.path, card.signature = await asyncio.to_thread(
                _write_new, self.directory, name, data)
            self._files[name] = (card.signature, new_id, None)
            self._cards[new_id] = card
            logger.info("character {} stored as {}", new_id, name)
        await self._changed()
        return card

    async def update(self, character_id: str,
                     change: Callable[[Character], ParsedCard]) -> CardFile:
        """Replace a card with ``change(current)``, written back in its file's format.

        ``change`` runs under the store lock, so concurrent updates never lose
        each other's edits. ``KeyError`` if the id is unknown; ``CardError`` from
        ``change`` leaves the store untouched.
        """
        async with self._lock:
            current = self._cards.get(character_id)
            if current is None:
                raise KeyError(character_id)
            parsed = await asyncio.to_thread(change, current.character)  # validation is CPU
            card = _with_identity(CardFile(parsed.character, current.path, current.container,
                                           parsed.warnings, current.signature), character_id)
            card.signature = await asyncio.to_thread(_rewrite, card)
            self._files[card.path.name] = (card.signature, character_id, None)
            self._cards[character_id] = card
            logger.info("character {} updated", character_id)
        await self._changed()
        return card

    async def delete(self, character_id: str) -> bool:
        """Remove the card's file; clears the active choice if it was this character."""
        async with self._lock:
            card = self._cards.pop(character_id, None)
            if card is None:
                return False
            await asyncio.to_thread(_unlink, self.directory, card.path.name)
            self._files.pop(card.path.name, None)
        if self._active == character_id:
            await self.set_active(None)
        logger.info("character {} deleted ({})", character_id, card.path.name)
        await self._changed()
        return True

    async def export(self, character_id: str, fmt: Literal["json", "png"]) -> bytes:
        """The card as a V2 file other tools import; PNG keeps the card's own image."""
        card = self._cards.get(character_id)
        if card is None:
            raise KeyError(character_id)
        if fmt == "json":
            return export.json_bytes(export.v2_card(card.character))
        return await asyncio.to_thread(_export_png, self.directory, card)

    async def avatar(self, character_id: str) -> bytes | None:
        """The card's own picture (a PNG card's image without the card text), or None."""
        card = self._cards.get(character_id)
        if card is None:
            raise KeyError(character_id)
        if card.container != "png":
            return None
        return await asyncio.to_thread(_avatar, self.directory, card)


# --- file work (runs in a thread) --------------------------------------------------------------


def _with_identity(card: CardFile, character_id: str) -> CardFile:
    card.character.id = character_id
    card.character.source_file = card.path.name or None
    return card


def _scan(directory: Path, known: dict[str, Signature]) -> dict[str, tuple[Signature, Scanned]]:
    """Every card file of ``directory``: re-read if its signature changed, else ``None``."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return {}
    root = directory.resolve()
    out: dict[str, tuple[Signature, Scanned]] = {}
    for entry in entries:
        container = SUFFIXES.get(Path(entry.name).suffix.lower())
        if container is None or entry.name.startswith("."):
            continue
        display = str(directory / entry.name)
        try:
            # A listed name is a plain child; only a symlink can point elsewhere.
            path = path_in(root, entry.name) if entry.is_symlink() else root / entry.name
            if not entry.is_file():
                continue
            st = entry.stat()
        except (ValueError, OSError) as exc:
            out[entry.name] = ((0, 0), Problem(display, None, "", f"skipped: {exc}"))
            continue
        sig = (st.st_mtime_ns, st.st_size)
        if known.get(entry.name) == sig:
            out[entry.name] = (sig, None)
            continue
        result = _read(path, container, display, st.st_size)
        if isinstance(result, CardFile):
            result.signature = sig
        out[entry.name] = (sig, result)
    return out


def _read(path: Path, container: Container, display: str, size: int) -> CardFile | Problem:
    if size > MAX_FILE_BYTES:
        return Problem(display, None, "", f"larger than {MAX_FILE_BYTES} bytes; skipped")
    try:
        if container == "yaml":
            parsed = read_yaml_card(path, display)
        else:
            parsed = parse_card(path.read_bytes())
    except CardError as exc:
        if not exc.issues:
            return Problem(display, exc.line, "", exc.message)
        first, more = exc.issues[0], len(exc.issues) - 1
        message = first.message + (f" (and {more} more problem(s))" if more else "")
        return Problem(display, exc.line or first.line, first.path, message)
    except OSError as exc:
        return Problem(display, None, "", f"cannot read: {exc.strerror}")
    return CardFile(parsed.character, path, parsed.container, parsed.warnings, (0, 0))


def _listdir(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _write_atomic(path: Path, data: bytes) -> Signature:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def _write_new(directory: Path, name: str, data: bytes) -> tuple[Path, Signature]:
    directory.mkdir(parents=True, exist_ok=True)
    path = path_in(directory, name)
    if path.exists():
        raise FileExistsError(path)
    return path, _write_atomic(path, data)


def _rewrite(card: CardFile) -> Signature:
    path = path_in(card.path.parent, card.path.name)
    image = _own_image(path) if card.container == "png" else None
    return _write_atomic(path, export.file_bytes(card.character, card.container, image))


def _unlink(directory: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        path_in(directory, name).unlink()


def _own_image(path: Path) -> bytes | None:
    """The PNG a card file is, if it is still there and intact (else a placeholder is used)."""
    try:
        image = path.read_bytes()
        png.read_chunks(image)
    except (OSError, CardError):
        return None
    return image


def _avatar(directory: Path, card: CardFile) -> bytes | None:
    image = _own_image(path_in(directory, card.path.name))
    return png.image_only(image) if image is not None else None


def _export_png(directory: Path, card: CardFile) -> bytes:
    image = _own_image(path_in(directory, card.path.name)) if card.container == "png" else None
    return export.png_bytes(card.character, image)
