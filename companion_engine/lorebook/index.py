"""Find every key of a lorebook in a text at once.

One ``KeyIndex`` holds the keys of the entries that share a scan buffer: exact
word lookups (a dict intersected with the text's word set), one Aho-Corasick
automaton per case mode for substring and bounded keys and for regex
prefilter literals, and the regexes that have no literal. A regex key that
amounts to a few fixed strings (``Key.forms``) is looked up like plain keys and
never runs. A scan costs one pass over the text in C plus work proportional to
what actually occurs in it, not to the size of the lorebook.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import ahocorasick

from companion_engine.lorebook.keys import REGEX, SUBSTR, WORD, Key, word_runs


def _bounded_at(text: str, end: int, length: int) -> bool:
    """SillyTavern's ``(?:^|\\W)key(?:$|\\W)`` for the occurrence ending at ``end``."""
    start = end - length + 1
    if start > 0:
        before = text[start - 1]
        if before.isascii() and (before.isalnum() or before == "_"):
            return False
    if end + 1 < len(text):
        after = text[end + 1]
        if after.isascii() and (after.isalnum() or after == "_"):
            return False
    return True


#: Characters whose ``str.lower()`` is ASCII though ASCII case folding leaves them
#: alone (İ, the Kelvin sign): in a text with one, a case-insensitive regex's forms
#: could match where the regex does not, so those keys run as regexes.
_LOWER_TO_ASCII = re.compile("[\u0130\u212a]")

#: An anchored regex key's needle: report where it occurs, not just that it does.
REGEX_AT = -1


@dataclass(slots=True)
class Found:
    """Keys found in one text: plain keys that matched, regexes worth running.

    ``regex_candidates`` maps a regex key to the positions its matches may
    start at (None: anywhere, run a full search).
    """

    hits: set[int] = field(default_factory=set)
    regex_candidates: dict[int, list[int] | None] = field(default_factory=dict)

    def update(self, other: Found, offset: int = 0) -> None:
        """Merge ``other``, found in a text that starts at ``offset`` of this one."""
        self.hits |= other.hits
        mine = self.regex_candidates
        for kid, starts in other.regex_candidates.items():
            if kid in mine and mine[kid] is None:
                continue
            if starts is None:
                mine[kid] = None
            else:
                mine.setdefault(kid, []).extend(p + offset for p in starts)  # type: ignore[union-attr]


class KeyIndex:
    """All keys scanned against one buffer."""

    def __init__(self) -> None:
        #: folded? -> word -> key ids
        self._words: dict[bool, dict[str, list[int]]] = {True: {}, False: {}}
        #: folded? -> string -> [(key id, kind)]
        self._needles: dict[bool, dict[str, list[tuple[int, int]]]] = {True: {}, False: {}}
        self._automata: dict[bool, ahocorasick.Automaton | None] = {True: None, False: None}
        #: Regex keys without a literal: run on every scan.
        self.unfiltered_regexes: list[int] = []
        #: Case-insensitive regex keys looked up by their ``forms``.
        self._folded_forms: list[int] = []
        self.size = 0

    def add(self, key: Key) -> None:
        self.size += 1
        if key.kind == REGEX and key.forms is not None:
            for text, kind in key.forms:
                self._add_plain(key.kid, text, kind, key.folded)
            if key.folded:
                self._folded_forms.append(key.kid)
        elif key.kind != REGEX:
            self._add_plain(key.kid, key.text, key.kind, key.folded)
        elif key.literals is None:
            self.unfiltered_regexes.append(key.kid)
        else:
            kind = REGEX_AT if key.anchored else REGEX
            for literal in key.literals:
                self._needles[key.folded].setdefault(literal, []).append((key.kid, kind))

    def _add_plain(self, kid: int, text: str, kind: int, folded: bool) -> None:
        if kind == WORD:
            self._words[folded].setdefault(text, []).append(kid)
        else:
            self._needles[folded].setdefault(text, []).append((kid, kind))

    def freeze(self) -> None:
        """Build the automata; call once after the last ``add``."""
        for folded, needles in self._needles.items():
            if not needles:
                continue
            automaton = ahocorasick.Automaton()
            for text, refs in needles.items():
                automaton.add_word(text, (len(text), tuple(refs)))
            automaton.make_automaton()
            self._automata[folded] = automaton
        self._needles = {True: {}, False: {}}

    def find(self, text: str) -> Found:
        """Which keys occur in ``text`` (regex keys: which are worth running on it)."""
        found = Found()
        if not text:
            return found
        for folded in (True, False):
            words, automaton = self._words[folded], self._automata[folded]
            if not words and automaton is None:
                continue
            view = text.lower() if folded else text
            if words:
                for word in words.keys() & word_runs(view):
                    found.hits.update(words[word])
            if automaton is not None:
                self._run(automaton, view, found, positions=len(view) == len(text))
        for kid in self.unfiltered_regexes:
            found.regex_candidates[kid] = None
        if self._folded_forms and _LOWER_TO_ASCII.search(text):
            for kid in self._folded_forms:  # rare: decide these by their regex
                found.hits.discard(kid)
                found.regex_candidates[kid] = None
        return found

    @staticmethod
    def _run(automaton: ahocorasick.Automaton, view: str, found: Found, *,
             positions: bool) -> None:
        """Walk the occurrences; ``positions``: offsets in ``view`` are offsets in the text."""
        hits, candidates = found.hits, found.regex_candidates
        settled: set[int] = set()  # needles whose keys are all decided
        for end, (length, refs) in automaton.iter(view):
            ident = id(refs)
            if ident in settled:
                continue
            pending = False
            for kid, kind in refs:
                if kind == SUBSTR:
                    hits.add(kid)
                elif kind == REGEX_AT and positions:
                    starts = candidates.setdefault(kid, [])
                    if starts is not None:
                        starts.append(end - length + 1)
                    pending = True  # every occurrence is a place to try
                elif kind in (REGEX, REGEX_AT):
                    candidates[kid] = None
                elif kid not in hits:
                    if _bounded_at(view, end, length):
                        hits.add(kid)
                    else:
                        pending = True
            if not pending:
                settled.add(ident)
