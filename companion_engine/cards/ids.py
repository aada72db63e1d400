"""Character ids: readable slugs that can never name a file outside the store.

An id is ``^[a-z0-9][a-z0-9_-]{0,63}$`` (no dots, no slashes, ASCII only) but not
``upload`` (``/api/characters/upload`` is the upload route), and the store only ever
touches ``<folder>/<id>.<ext>`` or names it listed itself, so neither an id from a
URL nor a name from an upload can reach another folder.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path

from companion_engine.patterns import CHARACTER_ID, ecma

ID_PATTERN = ecma(CHARACTER_ID)
_NOT_ID_CHARS = re.compile(r"[^a-z0-9_-]+")
MAX_ID_LENGTH = 64
#: Names the routes give a meaning: never an id (a card named "Upload" is ``upload-2``).
RESERVED = frozenset({"upload"})


def is_valid_id(value: object) -> bool:
    """True for a well-formed id (``fullmatch``: a trailing newline does not sneak through)."""
    return isinstance(value, str) and CHARACTER_ID.fullmatch(value) is not None


def slugify(text: str) -> str:
    """A best-effort id from a file stem or a card name; ``""`` if nothing usable is left
    (a ``RESERVED`` name comes back as it is, for ``unique_id`` to suffix).

    Accents are folded to ASCII (``Zoë`` -> ``zoe``); other characters become ``-``.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = _NOT_ID_CHARS.sub("-", ascii_text.lower())
    slug = slug.lstrip("-_")[:MAX_ID_LENGTH].rstrip("-_")
    return slug if is_valid_id(slug) or slug in RESERVED else ""


def unique_id(candidates: Iterable[str], taken: Callable[[str], bool],
              fallback: str = "character") -> str:
    """The first usable slug of ``candidates``, suffixed ``-2``, ``-3``... until not ``taken``."""
    base = next((s for s in map(slugify, candidates) if s), fallback)
    if base not in RESERVED and not taken(base):
        return base
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = base[: MAX_ID_LENGTH - len(suffix)] + suffix
        if not taken(candidate):
            return candidate
        n += 1


def path_in(directory: Path, name: str) -> Path:
    """``directory/name``, refusing any name that would resolve outside ``directory``."""
    if not name or name != Path(name).name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"not a plain file name: {name!r}")
    root = directory.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise ValueError(f"{name!r} resolves outside {root}")
    return path
