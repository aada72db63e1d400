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
  runs on texts that contain it. A regex that can only match a few fixed strings
  (``/\\bdragons?\\b/i``, ``/(?:elf|elves)/``, ``/name\\d*/``) gets ``forms``: those
  strings as ``WORD``/``BOUNDED``/``SUBSTR`` lookups that decide it without running it.
"""

from __future__ import annotations

import functools
import re
import re._constants as sre_c  # the stdlib regex parser's op codes
import re._parser as sre_parse
from dataclasses import dataclass
from itertools import product
from typing import Any

import regex

WORD, SUBSTR, BOUNDED, REGEX = range(4)
#: JS ``\w``: ASCII only.
WORD_RUN = re.compile(r"[A-Za-z0-9_]+")
#: Every ASCII character but ``[A-Za-z0-9_]`` -> a space (``word_runs``).
_NON_WORD_ASCII = str.maketrans({i: " " for i in range(128)
                                 if not (chr(i).isalnum() or chr(i) == "_")})
_WORD_ONLY = re.compile(r"[A-Za-z0-9_]+\Z")
#: SillyTavern's ``parseRegexFromString``: ``/pattern/flags`` with JS flags.
_JS_REGEX = re.compile(r"^/([\s\S]+?)/([gimsuy]*)$")
_UNESCAPED_SLASH = re.compile(r"(^|[^\\])/")
_NAMED_BACKREF = re.compile(r"\\k<([A-Za-z_][A-Za-z0-9_]*)>")
#: A regex key gets this long (seconds) per search; a pathological one then misses.
REGEX_TIMEOUT_S = 0.05
#: The scan buffer's message separator (``scan.MATCHER``).
MATCHER_CHAR = "\x01"
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
    #: REGEX: plain lookups ``(text, WORD | BOUNDED | SUBSTR)`` (lower-cased when
    #: ``folded``) one of which occurs exactly when the regex matches (``plain_forms``).
    forms: tuple[tuple[str, int], ...] | None = None
    #: REGEX: one try at one position is linear in the text (``linear_at_a_position``),
    #: so an ``anchored`` key's tries need no timeout.
    linear: bool = False
    #: REGEX, linear and ASCII: ``match`` of the same pattern compiled by the stdlib
    #: ``re`` (a try costs 0.2 us there against 0.5 us; both read such a pattern alike).
    tries: Any = None

    def search(self, text: str, starts: list[int] | None = None) -> bool:
        """Run a REGEX key on ``text`` (raw, not folded); a timeout is a miss.

        ``starts``: the only positions a match can begin at (an ``anchored`` key's
        literal occurrences), tried one by one instead of a full search.
        """
        try:
            if self.sticky:
                return self.pattern.match(text, timeout=REGEX_TIMEOUT_S) is not None
            if starts is not None and len(starts) <= MAX_ANCHORED_TRIES:
                match = self.pattern.match
                if self.linear:  # the timeout's own cost (~2 us a try) is the larger one
                    match = self.tries or match
                    if len(starts) == 1:
                        return match(text, starts[0]) is not None
                    return any(match(text, pos) is not None for pos in sorted(set(starts)))
                if len(starts) > 1:
                    starts = sorted(set(starts))
                return any(match(text, pos, timeout=REGEX_TIMEOUT_S) is not None
                           for pos in starts)
            return self.pattern.search(text, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:
            return False


def word_runs(text: str) -> list[str]:
    """``WORD_RUN.findall(text)``, about three times faster: one ``translate`` and a split.

    A split also cuts at non-ASCII whitespace, which is no word character either; a run
    with another non-ASCII character in it is split by the regex.
    """
    runs = text.translate(_NON_WORD_ASCII).split()
    if text.isascii():
        return runs
    return [w for run in runs for w in ((run,) if run.isascii() else WORD_RUN.findall(run))]


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


@functools.lru_cache(maxsize=256)
def _parse(pattern: str) -> Any:
    """The stdlib parser's tree of a JS pattern (named groups rewritten), or None.

    Cached: compiling a key reads it three times (``prefilter``, ``plain_forms``,
    ``linear_at_a_position``); callers copy before changing anything.
    """
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


# --- regexes whose tries cannot backtrack badly ------------------------------------------------

_ONE_CHAR = {sre_c.LITERAL, sre_c.NOT_LITERAL, sre_c.IN, sre_c.ANY, sre_c.CATEGORY}


def _repeats(items: Any) -> tuple[int, int] | None:
    """(repeats, wide repeats) of a pattern whose repeats each repeat one character, or None."""
    total = wide = 0
    for op, av in items:
        if op in _ONE_CHAR or op is sre_c.AT:
            continue
        if op in _EDGE_REPEATS:
            _low, high, item = av
            if len(item) != 1 or item[0][0] not in _ONE_CHAR:
                return None
            total += 1
            wide += high > 1
            continue
        if op is sre_c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            subs = [] if add_flags or del_flags else [sub]
        elif op is sre_c.BRANCH:
            subs = av[1]
        else:
            return None  # lookarounds, backreferences, atomic groups, possessive repeats
        if not subs:
            return None
        for sub in subs:
            counts = _repeats(sub)
            if counts is None:
                return None
            total, wide = total + counts[0], wide + counts[1]
    return total, wide


def linear_at_a_position(pattern: str) -> bool:
    """Whether one match try at one position takes time linear in the text.

    True for patterns whose repeats each repeat a single character, with at most one
    repeat longer than ``?`` and two repeats in all, and nothing that backtracks into
    itself (no lookarounds, backreferences, repeated groups): a try then walks the
    text at most a few times over. Such tries run without the regex timeout.
    """
    if _UNSAFE_SYNTAX.search(pattern):
        return False
    tree = _parse(pattern)
    if tree is None:
        return False
    counts = _repeats(tree.data)
    return counts is not None and counts[0] <= 2 and counts[1] <= 1


# --- regexes that are a few fixed strings ----------------------------------------------------

#: A regex equivalent to more plain strings than this keeps running as a regex.
MAX_FORMS = 32
#: Syntax the ``regex`` module reads differently from the stdlib parser used here
#: (POSIX classes, fuzzy ``{e<=1}``), inline groups other than ``(?:``/leading flags,
#: and numeric escapes (backreferences, octal): such a regex keeps running as one.
_UNSAFE_SYNTAX = re.compile(r"\[:|\{(?!\d+(?:,\d*)?\})|\(\?(?!:|[imsx]+\))|\\[0-9]")
_REGEX_ONLY_FLAGS = ~(re.IGNORECASE | re.UNICODE | re.VERBOSE | re.MULTILINE | re.DOTALL)
_BOUNDARY = (sre_c.AT, sre_c.AT_BOUNDARY)
_EDGE_REPEATS = {sre_c.MAX_REPEAT, sre_c.MIN_REPEAT}


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _strings(items: Any, limit: int) -> list[str] | None:
    """Every string ``items`` (no assertions, no unbounded repeats) matches, or None."""
    out = [""]
    for op, av in items:
        if op is sre_c.LITERAL:
            alts: list[str] | None = [chr(av)]
        elif op is sre_c.IN:
            alts = []
            for op2, av2 in av:
                if op2 is sre_c.LITERAL:
                    alts.append(chr(av2))
                elif op2 is sre_c.RANGE and av2[1] - av2[0] < limit:
                    alts.extend(map(chr, range(av2[0], av2[1] + 1)))
                else:
                    return None  # NEGATE, CATEGORY, a wide range
        elif op is sre_c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            alts = None if add_flags or del_flags else _strings(sub, limit)
        elif op is sre_c.BRANCH:
            alts = []
            for branch in av[1]:
                strings = _strings(branch, limit)
                if strings is None:
                    return None
                alts.extend(strings)
        elif op in _EDGE_REPEATS:
            low, high, item = av
            sub = _strings(item, limit)
            if sub is None or high is sre_c.MAXREPEAT or high > limit:
                return None
            if sum(len(sub) ** n for n in range(low, high + 1)) > limit:
                return None
            alts = ["".join(p) for n in range(low, high + 1) for p in product(sub, repeat=n)]
        else:
            return None  # ANY, CATEGORY, AT, lookarounds, groups refs, possessive, atomic
        if alts is None or len(out) * len(alts) > limit:
            return None
        out = [a + b for a in out for b in dict.fromkeys(alts)]
    return out


def plain_forms(pattern: str, flags: str) -> tuple[tuple[str, int], ...] | None:
    """The plain lookups a regex key amounts to, when it only ever matches fixed strings.

    ``(text, kind)`` pairs: ``SUBSTR`` (the regex matches where ``text`` occurs),
    or, for ``\\b...\\b`` around ASCII word characters, ``WORD``/``BOUNDED`` (an
    occurrence with a non-word character or the text's edge on both sides). For a
    search only *whether* a match exists counts, so an optional part at either end
    (``\\d*``) is dropped and ``x+`` at an end is ``x``. Anything else (``.``, classes
    like ``\\w``, anchors, lookarounds, unbounded repeats inside, backreferences,
    sticky ``y``, Unicode ``\\b`` or case folding) keeps the regex. Case-insensitive
    forms are lower-cased ASCII; the index falls back to the regex on the two
    characters whose ``str.lower()`` is ASCII but whose ASCII case folding is not.
    """
    if "y" in flags or _UNSAFE_SYNTAX.search(pattern):
        return None
    tree = _parse(pattern)
    if tree is None or tree.state.flags & _REGEX_ONLY_FLAGS:
        return None
    folded = "i" in flags or bool(tree.state.flags & re.IGNORECASE)
    items = list(tree.data)
    for edge in (0, -1):  # an optional part at an end is dropped, ``x{2,}`` is ``xx``
        while items and items[edge][0] in _EDGE_REPEATS:
            low, high, item = items[edge][1]
            if low == 0:
                items.pop(edge)
                continue
            if high != low:
                items[edge] = (items[edge][0], (low, low, item))
            break
    bounded = bool(items) and items[0] == _BOUNDARY
    if bounded != (len(items) > 1 and items[-1] == _BOUNDARY):
        return None  # a boundary on one side only
    if bounded:
        if not pattern.isascii():
            return None  # a Unicode pattern's \b is Unicode
        items = items[1:-1]
    strings = _strings(items, MAX_FORMS)
    if not strings or any(not s or MATCHER_CHAR in s for s in strings):
        return None  # a form with the buffer's joiner could span two scanned texts
    if folded:
        if not all(s.isascii() for s in strings):
            return None
        strings = list(dict.fromkeys(s.lower() for s in strings))
    if not bounded:
        return tuple((s, SUBSTR) for s in strings)
    if not all(_is_word_char(s[0]) and _is_word_char(s[-1]) for s in strings):
        return None
    return tuple((s, WORD if _WORD_ONLY.match(s) else BOUNDED) for s in strings)


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
    forms = plain_forms(pattern, flags)  # case-folded exactly when ``folded``
    linear = anchored and linear_at_a_position(pattern)
    tries = None
    if linear and not sticky and pattern.isascii():
        options = re.ASCII | (re.IGNORECASE if "i" in flags else 0) | (
            re.MULTILINE if "m" in flags else 0) | (re.DOTALL if "s" in flags else 0)
        try:
            tries = re.compile(pattern, options).match
        except re.error:
            tries = None
    return Key(kid=kid, raw=raw, kind=REGEX, text=pattern, folded=folded, pattern=compiled,
               sticky=sticky, literals=literals, anchored=anchored, forms=forms,
               linear=linear, tries=tries)
