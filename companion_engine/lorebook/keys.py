"""Lorebook keys compiled once: plain words, substrings, bounded words and JS-style regexes.

SillyTavern's ``matchKeys`` decides per key at every turn; here each key is
classified once so a scan can look all of them up at the same time:

- ``WORD``: whole-word matching of a key made only of ASCII word characters.
  ``(?:^|\\W)key(?:$|\\W)`` (JS ``\\W`` is ASCII) holds exactly when ``key`` is
  one of the text's maximal runs of ``[A-Za-z0-9_]`` — a set lookup.
- ``SUBSTR``: whole words off, or a key with whitespace (ST then uses a plain
  ``includes``): any occurrence.
- ``BOUNDED``: whole-word matching of a key with other characters
  (``don't``, ``café``, CJK): an occurrence with a non-word character (or the
  text's edge) on both sides.
- ``REGEX``: ``/pattern/flags``, compiled once with the ``regex`` module. A
  literal every match must contain is extracted when possible, so the regex only
  runs on texts that contain it.
"""

from __future__ import annotations

import re
import re._constants as sre_c  # the stdlib regex parser's op codes
import re._parser as sre_parse
from dataclasses import dataclass
from typing import Any

import regex

WORD, SUBSTR, BOUNDED, REGEX = range(4)
#: JS ``\w``: ASCII only.
WORD_RUN = re.compile(r"[A-Za-z0-9_]+")
_WORD_ONLY = re.compile(r"[A-Za-z0-9_]+\Z")
#: SillyTavern's ``parseRegexFromString``: ``/pattern/flags`` with JS flags.
_JS_REGEX = re.compile(r"^/([\s\S]+?)/([gimsuy]*)$")
_UNESCAPED_SLASH = re.compile(r"(^|[^\\])/")
_NAMED_BACKREF = re.compile(r"\\k<([A-Za-z_][A-Za-z0-9_]*)>")
#: A regex key gets this long (seconds) per search; a pathological one then misses.
REGEX_TIMEOUT_S = 0.05
#: Past this many literal occurrences one full search is cheaper than a match per occurrence.
MAX_ANCHORED_TRIES = 8


@dataclass(slots=True)
class Key:
    """One compiled key. ``text`` is what is looked for (lower-cased when ``folded``)."""

    kid: int
    raw: str
    kind: int
    text: str
    folded: bool
    pattern: Any = None  # regex.Pattern for REGEX keys
    sticky: bool = False  # JS ``y`` flag: match at the start only
    #: REGEX: literals one of which every match contains (None: always run the regex).
    literals: tuple[str, ...] | None = None
    #: REGEX: the ``literals`` also *start* every match, so the regex only needs
    #: trying where one of them occurs.
    anchored: bool = False

    def search(self, text: str, starts: list[int] | None = None) -> bool:
        """Run a REGEX key on ``text`` (raw, not folded); a timeout is a miss.

        ``starts``: the only positions a match can begin at (an ``anchored`` key's
        literal occurrences), tried one by one instead of a full search.
        """
        try:
            if self.sticky:
                return self.pattern.match(text, timeout=REGEX_TIMEOUT_S) is not None
            if starts is not None and len(starts) <= MAX_ANCHORED_TRIES:
                return any(self.pattern.match(text, pos, timeout=REGEX_TIMEOUT_S) is not None
                           for pos in sorted(set(starts)))
            return self.pattern.search(text, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:
            return False


def parse_js_regex(key: str) -> tuple[str, str] | None:
    """``(pattern, flags)`` if ``key`` is written ``/pattern/flags`` as SillyTavern reads it."""
    match = _JS_REGEX.match(key)
    if not match:
        return None
    pattern, flags = match.groups()
    if _UNESCAPED_SLASH.search(pattern):
        return None
    return pattern.replace("\\/", "/", 1), flags


def compile_js_regex(pattern: str, flags: str) -> tuple[Any, bool]:
    """A ``regex`` pattern behaving like the JS one; (pattern, sticky). Raises ``regex.error``.

    ASCII-only patterns get ``regex.ASCII`` so ``\\w``, ``\\b``, ``\\d`` and case
    folding are ASCII, as in JS; a non-ASCII pattern keeps Unicode semantics
    (its letters then fold case as JS's ``i`` does).
    """
    options = regex.V0
    if pattern.isascii():
        options |= regex.ASCII
    if "i" in flags:
        options |= regex.IGNORECASE
    if "m" in flags:
        options |= regex.MULTILINE
    if "s" in flags:
        options |= regex.DOTALL
    pattern = _NAMED_BACKREF.sub(r"(?P=\1)", pattern)
    return regex.compile(pattern, options), "y" in flags


# --- required literals of a regex (a prefilter) ---------------------------------------------

_REPEATS = {sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, getattr(sre_c, "POSSESSIVE_REPEAT", None)}


def _better(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    """The more selective of two literal alternatives (longer shortest literal, fewer items)."""
    if not b or any(not s for s in b):
        return a
    if not a:
        return b
    score_a, score_b = (min(map(len, a)), -len(a)), (min(map(len, b)), -len(b))
    return b if score_b > score_a else a


def _required(items: Any) -> list[str] | None:
    best: list[str] | None = None
    run: list[str] = []
    for op, av in items:
        if op is sre_c.LITERAL:
            run.append(chr(av))
            continue
        if run:
            best = _better(best, ["".join(run)])
            run = []
        if op is sre_c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if not add_flags and not del_flags:
                best = _better(best, _required(sub))
        elif op is getattr(sre_c, "ATOMIC_GROUP", None):
            best = _better(best, _required(av))
        elif op is sre_c.BRANCH:
            alternatives = [_required(branch) for branch in av[1]]
            if all(alternatives):
                best = _better(best, [s for alt in alternatives for s in alt or ()])
        elif op in _REPEATS:
            low, _high, item = av
            if low >= 1:
                best = _better(best, _required(item))
    if run:
        best = _better(best, ["".join(run)])
    return best


_ZERO_WIDTH = {sre_c.AT, sre_c.ASSERT, sre_c.ASSERT_NOT}


def _prefixes(items: Any) -> list[str] | None:
    """Literals one of which every match *starts* with, or None."""
    ops = list(items)
    for i, (op, av) in enumerate(ops):
        if op in _ZERO_WIDTH:
            continue
        if op is sre_c.LITERAL:
            run = []
            for op2, av2 in ops[i:]:
                if op2 is not sre_c.LITERAL:
                    break
                run.append(chr(av2))
            return ["".join(run)]
        if op is sre_c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            return None if add_flags or del_flags else _prefixes(sub)
        if op is sre_c.BRANCH:
            alternatives = [_prefixes(branch) for branch in av[1]]
            if all(alternatives):
                return [s for alt in alternatives for s in alt or ()]
            return None
        return None
    return None


def _parse(pattern: str) -> Any:
    """The stdlib parser's tree of a JS pattern (named groups rewritten), or None."""
    try:
        return sre_parse.parse(_NAMED_BACKREF.sub(r"(?P=\1)", pattern.replace("(?<", "(?P<")
                                                  .replace("(?P<=", "(?<=")
                                                  .replace("(?P<!", "(?<!")))
    except Exception:
        return None


def prefilter(pattern: str, flags: str) -> tuple[tuple[str, ...] | None, bool, bool]:
    """(literals, folded, anchored): what a scan looks for before running the regex.

    ``literals``: one of them occurs in any match (None: none could be proven, the
    regex runs on every scan); ``folded``: look for them in the lower-cased text;
    ``anchored``: every match *starts* with one of them. Case-insensitive
    non-ASCII patterns get no prefilter: Unicode case folding and ``str.lower``
    disagree on a few letters (``ſ``, final sigma).
    """
    folded = "i" in flags
    tree = _parse(pattern)
    if tree is None:
        return None, folded, False
    folded = folded or bool(tree.state.flags & re.IGNORECASE)
    if folded and not pattern.isascii():
        return None, folded, False
    found = _required(tree.data)
    if not found:
        return None, folded, False
    anchored = False
    starts = _prefixes(tree.data)
    if starts and min(map(len, starts)) >= min(3, *map(len, found)):
        found, anchored = starts, True
    literals = tuple(dict.fromkeys(x.lower() if folded else x for x in found))
    return literals, folded, anchored


# --- plain keys ------------------------------------------------------------------------------


def plain_key(kid: int, raw: str, *, case_sensitive: bool, whole_words: bool) -> Key:
    """Classify a plain (non-regex) key the way SillyTavern's ``matchKeys`` treats it."""
    text = raw if case_sensitive else raw.lower()
    if not whole_words or len(text.split()) > 1:
        kind = SUBSTR
    elif _WORD_ONLY.match(text):
        kind = WORD
    else:
        kind = BOUNDED
    return Key(kid=kid, raw=raw, kind=kind, text=text, folded=not case_sensitive)


def regex_key(kid: int, raw: str, pattern: str, flags: str) -> Key:
    """A REGEX key (raises ``regex.error`` when the pattern does not compile)."""
    compiled, sticky = compile_js_regex(pattern, flags)
    literals, folded, anchored = prefilter(pattern, flags)
    return Key(kid=kid, raw=raw, kind=REGEX, text=pattern, folded=folded, pattern=compiled,
               sticky=sticky, literals=literals, anchored=anchored)
