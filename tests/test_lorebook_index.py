"""The key index's fast paths give exactly the activations of the slow ones.

Two fast paths: a regex key that can only match a few fixed strings is looked up as
plain keys (``Key.forms``, never run), and an anchored regex whose tries are linear
runs without the regex timeout (``Key.linear``). Each is checked against SillyTavern's
one-key-at-a-time matcher (``reference.st_match``) and against the same book
compiled with both fast paths turned off, on hypothesis-generated keys and texts.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.lorebook import CompiledLore, ScanOptions, ScanResult, scan
from companion_engine.lorebook.keys import (
    BOUNDED,
    REGEX,
    SUBSTR,
    WORD,
    WORD_RUN,
    Key,
    linear_at_a_position,
    parse_js_regex,
    plain_forms,
    word_runs,
)
from companion_engine.lorebook.reference import st_match
from companion_engine.tokens import estimate_tokens
from tests.lorebook_helpers import compile_entries, entry, fired, run

keys_module = importlib.import_module("companion_engine.lorebook.keys")
scan_module = importlib.import_module("companion_engine.lorebook.scan")


@contextmanager
def no_fast_paths() -> Iterator[None]:
    """Compile with every regex key running as a regex, every try under the timeout."""
    with mock.patch.object(keys_module, "plain_forms", lambda pattern, flags: None), \
            mock.patch.object(keys_module, "linear_at_a_position", lambda pattern: False):
        yield


@contextmanager
def no_regex_budget() -> Iterator[None]:
    # On a loaded machine the per-turn regex budget could skip keys; these tests are
    # about what matches (test_lorebook_scan.py tests the budget).
    with mock.patch.object(scan_module, "REGEX_SCAN_BUDGET_S", float("inf")):
        yield


# --- the text's words, for whole-word keys --------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.text(), st.text(alphabet="ab_9 -.\n\x1c\x85\u00a0\u2003é’\u212a猫")))
def test_word_runs_are_the_regex_runs(text: str) -> None:
    assert word_runs(text) == WORD_RUN.findall(text)


# --- which regexes are fixed strings ---------------------------------------------------------

@pytest.mark.parametrize(("pattern", "flags", "expected"), [
    (r"\bdragons?\b", "i", (("dragon", WORD), ("dragons", WORD))),
    (r"\b(elf|elves)\b", "i", (("elf", WORD), ("elves", WORD))),
    (r"(?:Cat|dog)", "", (("Cat", SUBSTR), ("dog", SUBSTR))),
    (r"name\d*", "", (("name", SUBSTR),)),                # an optional tail cannot stop a match
    (r"\w*name", "i", (("name", SUBSTR),)),
    (r"con(cat)+", "", (("concat", SUBSTR),)),            # one repeat at the end is enough
    (r"[sS]x{1,2}", "", (("sx", SUBSTR), ("Sx", SUBSTR))),
    (r"(?i)Dragon", "", (("dragon", SUBSTR),)),
    (r"\bdon't\b", "", (("don't", BOUNDED),)),
    (r"café", "", (("café", SUBSTR),)),                   # case-sensitive Unicode: exact
    (r"café", "i", None),                                # Unicode case folding: the regex
    (r"caf\xe9", "i", None),                             # a non-ASCII literal, folded
    (r"\bcafé\b", "", None),                             # Unicode \b
    (r"\bdragon", "", None),                             # a boundary on one side only
    (r"\b-x\b", "", None),                               # \b next to a non-word character
    (r"pref\w*xy", "", None),                            # not a finite set of strings
    (r"^cat", "", None),
    (r"cat$", "", None),
    (r"c.t", "", None),
    (r"a++b", "", None),                                 # possessive: not a plain language
    (r"(a)\1", "", None),
    (r"(?<=x)y", "", None),
    (r"x{e<=1}", "", None),                              # the regex module's fuzzy syntax
    (r"[[:alpha:]]", "", None),                          # its POSIX classes
    (r"\x01a", "", None),                                # the buffer's joiner
    (r"cat", "y", None),                                 # sticky: at the start only
    (r"[a-z]{3}", "", None),                             # too many strings
    (r"[", "", None),
])
def test_plain_forms(pattern: str, flags: str, expected: object) -> None:
    assert plain_forms(pattern, flags) == expected


@pytest.mark.parametrize(("pattern", "expected"), [
    (r"pref\w*xy", True),
    (r"(?:ab|cd)\w*e", True),
    (r"\bname s?\b", True),
    (r"a\w*b\w*c", False),        # two wide repeats: a try can be quadratic
    (r"(x+x+)+y", False),
    (r"(a|a)*b", False),          # a repeated group
    (r"(?<=x)y", False),
    (r"(\w)\1", False),
    (r"[", False),
])
def test_linear_at_a_position(pattern: str, expected: bool) -> None:
    assert linear_at_a_position(pattern) is expected


def test_linear_tries_run_in_the_stdlib_engine_and_agree() -> None:
    lore = compile_entries([entry("/pref\\w*xy/", id="p"), entry("/pref\\w*xy/y", id="y"),
                            entry("/préf\\w*xy/", id="u"), entry("/(x+x+)+y/", id="x")])
    tries = {k.raw: k.tries is not None for k in lore.keys}
    # sticky tries only at the start, a Unicode pattern folds case its own way, a
    # backtracking one keeps its timeout: those stay with the regex module
    assert tries == {"/pref\\w*xy/": True, "/pref\\w*xy/y": False, "/préf\\w*xy/": False,
                     "/(x+x+)+y/": False}
    chat = ["User: a prefabxy, préfoxy and prefno"]
    assert fired(run(lore, chat)) == ["p", "u"]
    with no_fast_paths():
        assert fired(run(compile_entries([entry("/pref\\w*xy/", id="p")]), chat)) == ["p"]


def test_fixed_string_regexes_never_run() -> None:
    lore = compile_entries([entry("/\\bdragons?\\b/i", id="d"), entry("/(?:elf|elves)/", id="e"),
                            entry("/orc\\d*/", id="o"), entry("/\\bkings?\\b/i", id="k")])
    assert all(k.forms is not None for k in lore.keys)

    def refuse(self: Key, text: str, starts: list[int] | None = None) -> bool:
        raise AssertionError(f"{self.raw} ran as a regex")

    with mock.patch.object(Key, "search", refuse):
        assert fired(run(lore, ["User: Two DRAGONS, an elf and orc7."])) == ["d", "e", "o"]
        assert fired(run(lore, ["User: dragonfly, Elves, ORC"])) == []


@pytest.mark.parametrize(("keys", "content", "line", "expected"), [
    (["/t\\n\\x01U/", "/\\x01b/"], "a says hi", "User: b", [0]),  # across two messages
    (["/\\bab/", "/ab\\b/i", "/\\bxa/", "/\\bab/i"], "AB", "User: xab", [1, 2, 3]),
    (["/\\xe9/i", "/é/i"], "x", "User: É", [1]),       # ASCII against Unicode case folding
    (["/a++a/", "/a*+b/", "/a+a/"], "x", "User: aab", [1, 2]),  # possessive repeats
])
def test_fast_and_slow_paths_agree_on_edge_cases(keys: list[str], content: str, line: str,
                                                 expected: list[int]) -> None:
    book = [entry("/\\bstart\\b/", content, id="start", order=200)] + [
        entry(k, "x", id=i) for i, k in enumerate(keys)]
    lines = ["User: start", line]  # newest first: the buffer ends with ``line``
    fast = compile_entries(book)
    with no_fast_paths():
        slow = compile_entries(book)
    outcome = _outcome(fast, lines, 0)
    assert outcome == _outcome(slow, lines, 0)
    assert sorted(uid for uid, *_ in outcome[0] if uid != "start") == expected


def test_text_with_a_letter_lowering_to_ascii_runs_the_regex() -> None:
    # "\u212a".lower() == "k" but /k/i does not match the Kelvin sign (nor JS's /k/i).
    lore = compile_entries([entry("/\\bkings?\\b/i", id="k")])
    assert fired(run(lore, ["User: \u212aing"])) == []
    assert fired(run(lore, ["User: \u212aing or King"])) == ["k"]
    assert fired(run(lore, ["User: \u0130 kings"])) == ["k"]


# --- generated keys and texts: the index against SillyTavern's matcher ------------------------

_atoms = st.sampled_from(["a", "b", "c", "A", "k", "K", "i", "9", "_", "-", "\\.", " ", "é",
                          "\\xe9", "[ab]", "[a-c]", "[sS]", "[^a]", "\\d", "\\w", "\\s", ".",
                          "(?:a|bc)", "(ab|c)", "(?:k|I)", "\\*", "\\(", "\\/", "\\x01"])
_quantifiers = st.sampled_from(["", "", "", "?", "*", "+", "{2}", "{1,2}", "{0,2}", "+?", "*+"])
_body = st.lists(st.builds(str.__add__, _atoms, _quantifiers), min_size=1, max_size=4).map(
    "".join)
#: Pieces of regexes that are fixed strings (``Key.forms``), with a few that are not.
_finite_atoms = st.sampled_from(["a", "b", "k", "I", "é", "\\xe9", "-", " ", "'", "[ab]",
                                 "(?:a|bI)", "\\n", "\\x01", "\\d"])
_finite_body = st.lists(st.builds(str.__add__, _finite_atoms,
                                  st.sampled_from(["", "", "", "?", "+", "{1,2}", "++", "*?"])),
                        min_size=1, max_size=3).map("".join)
_finite = st.builds(lambda pre, body, post: pre + body + post, st.sampled_from(["", "\\b"]),
                    _finite_body, st.sampled_from(["", "\\b"]))
_pattern = st.one_of(
    st.builds(lambda pre, body, post: pre + body + post,
              st.sampled_from(["", "", "\\b", "^"]), _body, st.sampled_from(["", "", "\\b", "$"])),
    _finite, _finite, _finite,
    st.builds(lambda a, b, q: f"(?:{a}|{b}){q}", _body, _body, _quantifiers),
    st.builds(lambda a, b: f"\\b(?:{a}|{b})\\b", _body, _body),
)
_regex_key = st.builds(lambda p, flags: f"/{p}/{flags}", _pattern,
                       st.sampled_from(["", "i", "i", "g", "y", "is"]))
_plain_key = st.sampled_from(["a", "abc", "K", "ab c", "café", "don't", "9_", "é"])
_key = st.one_of(_regex_key, _regex_key, _regex_key, _plain_key)
_fragments = st.sampled_from(["a", "b", "c", "A", "B", "ab", "bc", "abc", "aab", "k", "K",
                              "\u212a", "\u0130", "i", "I", "é", "É", "9", "99", "_", " ",
                              "-", ".", "*", "(", "/", "\n", "s", "S", "sS", "x", "cat", "'",
                              "\x01"])
_text = st.lists(_fragments, max_size=20).map("".join)
#: Every character the atoms above can match, and the case-folding troublemakers.
_ALPHABET = "abcABkKIi9_ -'.*(/sS\n\x01éÉ\u212a\u0130"


#: CPython's ``re`` raises SystemError ("The span of capturing group is wrong") on some texts
#: when a capturing group comes before a possessive repeat, e.g. ``((ab|c)|.*+)*+`` searched in
#: "cakcbb" (3.11.7). ``from_regex`` filters its texts with ``re``, so such keys get fragments.
#: (The engine runs them with ``regex`` and is not affected: ``test_stdlib_re_bug_keys_scan``.)
_STDLIB_RE_BUG = re.compile(r"\((?!\?).*[*+?}]\+", re.DOTALL)


def _matching(key: str) -> st.SearchStrategy[str]:
    """Texts holding a match of a regex key (hypothesis's ``from_regex``), else fragments."""
    parsed = parse_js_regex(key)
    if parsed is None or _STDLIB_RE_BUG.search(parsed[0]):
        return _fragments
    pattern, flags = parsed
    options = (re.IGNORECASE if "i" in flags else 0) | (re.ASCII if pattern.isascii() else 0)
    try:
        return st.from_regex(re.compile(pattern, options), alphabet=_ALPHABET)
    except Exception:  # a pattern the stdlib refuses, or from_regex cannot generate
        return _fragments


@st.composite
def keys_and_text(draw: st.DrawFn) -> tuple[list[str], str]:
    """Keys, and a text built of fragments and of matches of those keys (near misses too)."""
    keys = draw(st.lists(_key, min_size=1, max_size=6))
    pieces = draw(st.lists(st.one_of(_fragments, *map(_matching, keys)), max_size=6))
    pieces.insert(draw(st.integers(0, len(pieces))), draw(_matching(draw(st.sampled_from(keys)))))
    return keys, "".join(pieces)


@pytest.mark.parametrize(("key", "text"), [("/((ab|c)|.*+)*+/", "cakcbb"),
                                          ("/(c?(ab|c){1,2}|[ab]?)*+/", "cB"),
                                          ("/((ab|c)++|c*+a*a*+)++/i", "CABA")])
def test_stdlib_re_bug_keys_scan(key: str, text: str) -> None:
    """Keys on which CPython's ``re`` raises SystemError scan like SillyTavern's matcher."""
    lore = compile_entries([entry(key, id=0)], case_sensitive=False, match_whole_words=False)
    line = "User: " + text
    result = scan(lore, [line], ScanOptions(recursive=False, token_budget=10**6),
                  count=estimate_tokens)
    assert fired(result) == [0]
    assert st_match("\x01" + line, key, case_sensitive=False, whole_words=False)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys_text=keys_and_text(), case_sensitive=st.booleans(), whole=st.booleans())
def test_generated_keys_match_as_sillytavern_does(keys_text: tuple[list[str], str],
                                                  case_sensitive: bool, whole: bool) -> None:
    keys, text = keys_text
    lore = compile_entries([entry(k, id=i) for i, k in enumerate(keys)],
                           case_sensitive=case_sensitive, match_whole_words=whole)
    line = ("User: " + text).strip()  # scan lines come trimmed (chat_for_scan)
    with no_regex_budget():
        result = scan(lore, [line], ScanOptions(recursive=False, token_budget=10**6),
                      count=estimate_tokens)
    buffer = "\x01" + line
    expected = [i for i, k in enumerate(keys)
                if st_match(buffer, k, case_sensitive=case_sensitive, whole_words=whole)]
    assert sorted(fired(result)) == expected


# --- generated books: whole scans with and without the fast paths ----------------------------

_entries = st.lists(st.fixed_dictionaries({
    "keys": st.lists(_key, min_size=1, max_size=3),
    "secondary_keys": st.lists(_key, max_size=2),
    "selective": st.booleans(),
    "logic": st.integers(0, 3),
    "content": _text,
    "order": st.integers(0, 3),
    "case_sensitive": st.sampled_from([None, True, False]),
    "match_whole_words": st.sampled_from([None, True, False]),
}), min_size=1, max_size=8)


def _book(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry(e["keys"], e["content"] or "x", id=i, order=e["order"],
                  secondary_keys=e["secondary_keys"], selective=e["selective"],
                  ext={"selectiveLogic": e["logic"], "case_sensitive": e["case_sensitive"],
                       "match_whole_words": e["match_whole_words"]})
            for i, e in enumerate(raw)]


def _outcome(lore: CompiledLore, chat: list[str], seed: int) -> tuple[Any, ...]:
    with no_regex_budget():
        result: ScanResult = scan(lore, chat, ScanOptions(scan_depth=3, token_budget=40),
                                  count=estimate_tokens, rng=random.Random(seed))
    return ([(a.entry.uid, a.matched, a.scan_pass, a.tokens) for a in result.activated],
            [(c.entry.uid, c.tokens, c.reason) for c in result.cut], result.passes,
            result.overflowed)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_entries, chat=st.lists(_text, min_size=1, max_size=4), seed=st.integers(0, 3))
def test_fast_paths_give_the_same_scan(raw: list[dict[str, Any]], chat: list[str],
                                       seed: int) -> None:
    book = _book(raw)
    lines = [f"User: {m}".strip() for m in chat]
    fast = compile_entries(book)
    with no_fast_paths():
        slow = compile_entries(book)
    assert all(k.forms is None and not k.linear and k.tries is None
               for k in slow.keys if k.kind == REGEX)
    assert _outcome(fast, lines, seed) == _outcome(slow, lines, seed)


# --- where a big book's scan runs ------------------------------------------------------------

def test_a_big_book_scans_on_the_loop_while_its_median_scan_is_fast(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stage_module = importlib.import_module("companion_engine.builtin.lorebook")
    stage = stage_module.LorebookStage()
    big = compile_entries([entry(f"key{i}", id=i) for i in range(400)])
    small = compile_entries([entry("key", id=1)])
    clock = [0.0]
    took = [0.0]

    def timed_scan(lore: CompiledLore, *args: Any, **kwargs: Any) -> ScanResult:
        clock[0] += took[0]
        return ScanResult()

    monkeypatch.setattr(stage_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(stage_module, "scan", timed_scan)

    def scan_taking(seconds: float) -> None:
        took[0] = seconds
        stage._measured_scan(big, ["User: hi"], ScanOptions(), count=estimate_tokens)

    assert not stage._scans_slowly(small)  # a small book never hops
    assert stage._scans_slowly(big)  # a big one's first scan: its cost is unknown
    for _ in range(3):
        scan_taking(0.001)
    assert not stage._scans_slowly(big)
    scan_taking(0.010)  # one slow (preempted) scan leaves the median alone
    assert not stage._scans_slowly(big)
    scan_taking(0.001)
    scan_taking(0.020)  # over THREAD_SCAN_MAX_S: the next scan goes to a thread at once
    assert stage._scans_slowly(big)
    scan_taking(0.001)
    assert not stage._scans_slowly(big)
    for _ in range(stage_module.SCAN_WINDOW // 2 + 1):  # slow most of the time: a thread
        scan_taking(0.005)
    assert stage._scans_slowly(big)
    for _ in range(stage_module.SCAN_WINDOW // 2 + 1):
        scan_taking(0.001)
    assert not stage._scans_slowly(big)
    assert stage._scans_slowly(compile_entries([entry(f"key{i}", id=i) for i in range(400)]))
