"""Pronunciation lexicon: words the voice should say differently (``speech.lexicon``).

``{"Seraphina": "Sera-feena", "GIF": "jif"}``: each key is replaced as a whole
word. A key written all in lowercase matches in any case ("nyx" matches "Nyx"
and "NYX"); a key with a capital letter matches only as written, so "US" (the
country) and "us" can differ. Longer keys win over shorter ones they contain
("New York City" before "New York"). A card may add its own entries
(``extensions.companion.lexicon``), which override the profile's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

#: A lexicon key: 1-100 characters, no line breaks.
MAX_KEY = 100
MAX_ENTRIES = 10_000


class Lexicon:
    """Compiled replacements; ``apply`` is one regex pass over the text."""

    def __init__(self, entries: Mapping[str, str]) -> None:
        self._exact = {k: v for k, v in entries.items() if not k.islower()}
        self._folded = {k.casefold(): v for k, v in entries.items() if k.islower()}
        keys = sorted(entries, key=len, reverse=True)
        if not keys:
            self._pattern: re.Pattern[str] | None = None
            return
        parts = [("(?i:" + re.escape(k) + ")") if k.islower() else re.escape(k) for k in keys]
        self._pattern = re.compile(r"(?<![\w])(?:" + "|".join(parts) + r")(?![\w])")

    def __bool__(self) -> bool:
        return self._pattern is not None

    def apply(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(self._replace, text)

    def _replace(self, m: re.Match[str]) -> str:
        word = m.group(0)
        if word in self._exact:
            return self._exact[word]
        return self._folded.get(word.casefold(), word)


@lru_cache(maxsize=64)
def _compiled(items: tuple[tuple[str, str], ...]) -> Lexicon:
    return Lexicon(dict(items))


def lexicon(*layers: Mapping[str, str] | None) -> Lexicon:
    """One lexicon from layers (profile, then card); later layers override earlier ones.
    Compiled once per distinct content."""
    merged: dict[str, str] = {}
    for layer in layers:
        if layer:
            merged.update(layer)
    return _compiled(tuple(sorted(merged.items())))


def check_entries(entries: Mapping[str, str]) -> dict[str, str]:
    """Validate a lexicon (config): keys are short one-line words or phrases."""
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entries")
    out = {}
    for key, value in entries.items():
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY \
                or "\n" in key:
            raise ValueError(f"lexicon key {key!r} must be 1-{MAX_KEY} characters on one line")
        if not isinstance(value, str) or len(value) > 4 * MAX_KEY:
            raise ValueError(f"lexicon value for {key!r} must be a string of at most "
                             f"{4 * MAX_KEY} characters")
        out[key.strip()] = value
    return out
