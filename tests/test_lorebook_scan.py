"""The World Info scan rules, one by one, against SillyTavern 1.12's behaviour."""

from __future__ import annotations

import importlib
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.lorebook import ScanOptions, place, scan
from companion_engine.lorebook.decorators import parse_decorators
from companion_engine.lorebook.keys import prefilter
from companion_engine.lorebook.reference import st_match
from companion_engine.tokens import estimate_tokens
from tests.lorebook_helpers import compile_entries, entry, fired, run

# --- key matching ---------------------------------------------------------------------------


def test_plain_keys_ignore_case_by_default() -> None:
    assert fired(run([entry("Dragon", id=1)], ["User: a DRAGON appears"])) == [1]


def test_case_sensitive_option_and_entry_override() -> None:
    chat = ["User: a dragon appears"]
    assert fired(run([entry("Dragon", id=1)], chat,
                     compile_opts={"case_sensitive": True})) == []
    # SillyTavern's per-entry setting (extensions.case_sensitive) beats the option
    e = entry("Dragon", id=1, ext={"case_sensitive": False})
    assert fired(run([e], chat, compile_opts={"case_sensitive": True})) == [1]
    e = entry("Dragon", id=2, ext={"case_sensitive": True})
    assert fired(run([e], chat)) == []


def test_whole_words_single_word() -> None:
    e = [entry("cat", id=1)]
    assert fired(run(e, ["User: concatenate these"])) == []
    assert fired(run(e, ["User: a cat!"])) == [1]
    assert fired(run(e, ["User: cat_food"])) == []  # _ is a word character in JS
    assert fired(run(e, ["User: concatenate these"],
                     compile_opts={"match_whole_words": False})) == [1]


def test_whole_words_entry_override() -> None:
    e = [entry("cat", id=1, ext={"match_whole_words": False})]
    assert fired(run(e, ["User: concatenate"])) == [1]


def test_multi_word_key_is_a_plain_substring_even_with_whole_words() -> None:
    # SillyTavern: a key with whitespace skips the word-boundary check
    e = [entry("magical forest", id=1)]
    assert fired(run(e, ["User: the supermagical forests"])) == [1]
    assert fired(run(e, ["User: magical\nforest"])) == []


def test_non_ascii_letters_count_as_boundaries() -> None:
    # JS \W is ASCII-only: é is a "non-word" character on both sides of a key
    assert fired(run([entry("caf", id=1)], ["User: un café"])) == [1]
    assert fired(run([entry("café", id=1)], ["User: des cafés"])) == []
    assert fired(run([entry("café", id=1)], ["User: un café."])) == [1]
    assert fired(run([entry("猫", id=1)], ["User: 私は猫が好き"])) == [1]


def test_keys_with_punctuation() -> None:
    e = [entry("don't", id=1), entry("C++", id=2)]
    assert fired(run(e, ["User: I don't like C++ much"])) == [1, 2]
    assert fired(run(e, ["User: I don'tt"])) == []


def test_macros_in_keys_are_expanded() -> None:
    assert fired(run([entry("{{char}}", id=1)], ["User: hi Seraphina"])) == [1]


def test_empty_and_blank_keys_are_ignored() -> None:
    lore = compile_entries([entry(["", "  "], id=1)])
    assert lore.primary[0] == []
    assert any("can never activate" in w for w in lore.warnings)
    assert fired(run(lore, ["User: anything"])) == []


# --- regex keys -----------------------------------------------------------------------------


def test_regex_keys() -> None:
    e = [entry("/drag(on|ons)\\b/i", id=1)]
    assert fired(run(e, ["User: DRAGONS!"])) == [1]
    assert fired(run(e, ["User: dragonfly"])) == []


def test_regex_ignores_case_and_whole_word_settings() -> None:
    e = [entry("/Dragon/", id=1)]
    assert fired(run(e, ["User: dragon"])) == []  # case applies only through the i flag
    assert fired(run(e, ["User: Dragonfly"])) == [1]  # no word boundary for regexes


def test_regex_caret_never_matches_a_message_start() -> None:
    e = [entry("/^User/", id=1), entry("/^hello/m", id=2)]
    # the buffer starts with \x01 and each message follows "\n\x01"
    assert fired(run(e, ["User: hello", "Seraphina: hello"])) == []


def test_regex_without_a_literal_still_runs() -> None:
    e = [entry("/\\d{3}-\\d{4}/", id=1)]
    assert fired(run(e, ["User: call 555-1234"])) == [1]


def test_regex_flags_and_js_syntax() -> None:
    e = [entry("/(?<w>ab)\\k<w>/", id=1), entry("/x.y/s", id=2), entry("/seraphina/y", id=3)]
    assert fired(run(e, ["User: abab x\ny"])) == [1, 2]


def test_invalid_regex_is_plain_text_with_a_warning() -> None:
    lore = compile_entries([entry("/[unclosed/", id=1)])
    assert any("invalid regex" in w for w in lore.warnings)
    assert fired(run(lore, ["User: look: /[unclosed/ here"])) == [1]


def test_slash_key_with_unescaped_slash_is_plain() -> None:
    assert fired(run([entry("/a/b/", id=1)], ["User: path /a/b/ here"])) == [1]


def test_catastrophic_regex_times_out_as_a_miss() -> None:
    e = [entry("/(x+x+)+y/", id=1)]
    assert fired(run(e, ["User: " + "x" * 5000 + " y"])) == []  # runs into its timeout


# --- the scan buffer ------------------------------------------------------------------------


def test_scan_depth_counts_newest_messages() -> None:
    e = [entry("forest", id=1)]
    chat = ["User: the forest", "Seraphina: yes", "User: and then?"]
    assert fired(run(e, chat, scan_depth=2)) == []
    assert fired(run(e, chat, scan_depth=3)) == [1]


def test_scan_depth_zero_matches_nothing_but_constants() -> None:
    e = [entry("forest", id=1), entry("x", id=2, constant=True)]
    assert fired(run(e, ["User: forest"], scan_depth=0)) == [2]


def test_entry_scan_depth_override() -> None:
    e = [entry("forest", id=1, ext={"scan_depth": 3}), entry("forest", id=2)]
    chat = ["User: the forest", "Seraphina: yes", "User: and then?"]
    assert fired(run(e, chat, scan_depth=1, recursive=False)) == [1]


def test_speaker_names_are_scanned() -> None:
    e = [entry("Seraphina", id=1)]
    assert fired(run(e, ["Seraphina: hello"])) == [1]
    assert fired(run(e, ["hello"])) == []


def test_a_key_never_spans_two_messages() -> None:
    e = [entry("dark forest", id=1)]
    assert fired(run(e, ["User: it is dark", "Seraphina: forest"])) == []


# --- activation logic -----------------------------------------------------------------------


@pytest.mark.parametrize(("logic", "text", "expected"), [
    (0, "sword and shield", True), (0, "sword alone", False),      # AND ANY
    (1, "sword shield helm", False), (1, "sword shield", True),    # NOT ALL
    (2, "sword shield", False), (2, "sword alone", True),          # NOT ANY
    (3, "sword shield helm", True), (3, "sword shield", False),    # AND ALL
])
def test_selective_logic(logic: int, text: str, expected: bool) -> None:
    e = entry("sword", id=1, selective=True, secondary_keys=["shield", "helm"],
              ext={"selectiveLogic": logic})
    assert bool(fired(run([e], [f"User: {text}"]))) is expected


def test_secondary_keys_ignored_unless_selective() -> None:
    e = entry("sword", id=1, selective=False, secondary_keys=["shield"])
    assert fired(run([e], ["User: sword"])) == [1]
    e = entry("sword", id=2, selective=True, secondary_keys=[])
    assert fired(run([e], ["User: sword"])) == [2]


def test_constant_and_disabled() -> None:
    e = [entry("zzz", id=1, constant=True), entry("sword", id=2, enabled=False),
         entry("sword", id=3, constant=True, enabled=False)]
    assert fired(run(e, ["User: sword"])) == [1]


def test_decorators() -> None:
    e = [entry("nothing-here", "@@activate\nalways", id=1),
         entry("sword", "@@dont_activate\nnever", id=2),
         entry("sword", "@@activate\n@@dont_activate\nactivate wins", id=3)]
    result = run(e, ["User: sword"])
    assert fired(result) == [1, 3]
    assert [a.content for a in result.activated] == ["always", "activate wins"]


def test_probability() -> None:
    e = [entry("sword", id=1, ext={"probability": 0, "useProbability": True}),
         entry("sword", id=2, ext={"probability": 0, "useProbability": False}),
         entry("sword", id=3, ext={"probability": 100})]
    assert fired(run(e, ["User: sword"])) == [2, 3]
    half = [entry("sword", id=i, ext={"probability": 50}) for i in range(200)]
    n = len(fired(run(half, ["User: sword"], token_budget=100_000)))
    assert 60 < n < 140


def test_inclusion_group_keeps_one_winner() -> None:
    e = [entry("sword", id=1, order=10, ext={"group": "weapon"}),
         entry("sword", id=2, order=20, ext={"group": "weapon", "group_override": True}),
         entry("sword", id=3, order=30, ext={"group": "weapon"}),
         entry("sword", id=4)]
    assert sorted(fired(run(e, ["User: sword"]))) == [2, 4]
    no_override = [entry("sword", id=i, ext={"group": "g"}) for i in range(5)]
    assert len(fired(run(no_override, ["User: sword"]))) == 1


# --- recursion ------------------------------------------------------------------------------


def chain(**b_ext: object) -> list[dict[str, object]]:
    return [entry("castle", "The castle holds the crown.", id="a"),
            entry("crown", "The crown is cursed.", id="b", ext=dict(b_ext))]


def test_recursion_activates_entries_named_by_lore() -> None:
    assert fired(run(chain(), ["User: the castle"])) == ["a", "b"]
    assert fired(run(chain(), ["User: the castle"], recursive=False)) == ["a"]


def test_prevent_recursion_and_exclude_recursion() -> None:
    lore = chain()
    lore[0]["extensions"] = {"prevent_recursion": True}
    assert fired(run(lore, ["User: the castle"])) == ["a"]
    assert fired(run(chain(exclude_recursion=True), ["User: the castle"])) == ["a"]
    # excluded from recursion, but the chat itself still activates it
    assert fired(run(chain(exclude_recursion=True), ["User: castle crown"])) == ["a", "b"]


def test_delay_until_recursion() -> None:
    e = [entry("castle", "The castle.", id="a"),
         entry("castle", "Seen later.", id="d", ext={"delay_until_recursion": True})]
    result = run(e, ["User: the castle"])
    assert fired(result) == ["a", "d"]
    assert [a.scan_pass for a in result.activated] == [1, 2]
    # nothing recursed: a delayed entry has no recursion pass to activate in
    only = [entry("castle", "x", id="d", ext={"delay_until_recursion": True})]
    assert fired(run(only, ["User: the castle"])) == []


def test_max_recursion_steps() -> None:
    e = [entry("a1", "a2", id=1), entry("a2", "a3", id=2), entry("a3", "a4", id=3)]
    assert fired(run(e, ["User: a1"])) == [1, 2, 3]
    assert fired(run(e, ["User: a1"], max_recursion_steps=2)) == [1, 2]


def test_min_activations_widen_the_scan() -> None:
    e = [entry("forest", id=1)]
    chat = ["User: the forest", "Seraphina: yes", "User: hm", "Seraphina: and?"]
    assert fired(run(e, chat, scan_depth=1)) == []
    assert fired(run(e, chat, scan_depth=1, min_activations=1)) == [1]


# --- budget and order -----------------------------------------------------------------------


def test_budget_keeps_highest_order_first_and_stops_at_first_overflow() -> None:
    e = [entry("sword", "a" * 400, id="low", order=1),      # 100 tokens
         entry("sword", "b" * 400, id="high", order=50),    # 100 tokens
         entry("sword", "c" * 2000, id="huge", order=20),   # 500 tokens: overflows
         entry("sword", "d", id="tiny", order=10)]          # would fit, but scanning stopped
    result = run(e, ["User: sword"], token_budget=300)
    assert fired(result) == ["high"]
    assert result.overflowed
    assert {x.uid for x in result.dropped} == {"huge", "tiny", "low"}
    # What the preview lists (issue 19.13): the one that did not fit, counted, then the rest
    # of the pass, never tried because SillyTavern stops at the first overflow.
    assert [(c.entry.uid, c.tokens, c.reason) for c in result.cut] == [
        ("huge", 501, "over_budget"), ("tiny", None, "scan_stopped"),  # 2000 chars + "\n"
        ("low", None, "scan_stopped")]


def test_exact_fit_counts_as_overflow() -> None:
    content = "a" * 39  # + "\n" = 40 chars = 10 estimated tokens
    e = [entry("sword", content, id=1)]
    assert fired(run(e, ["User: sword"], token_budget=10)) == []
    assert fired(run(e, ["User: sword"], token_budget=11)) == [1]


def test_positions_ascending_order_and_ties() -> None:
    e = [entry("k", "after-5", id=1, order=5, position="after_char"),
         entry("k", "before-9", id=2, order=9, position="before_char"),
         entry("k", "before-1", id=3, order=1, position="before_char"),
         entry("k", "tie-a", id=4, order=3, position="before_char"),
         entry("k", "tie-b", id=5, order=3, position="before_char"),
         entry("k", "depth", id=6, order=1, ext={"position": 4, "depth": 2, "role": 1}),
         entry("k", "depth-2", id=7, order=2, ext={"position": 4, "depth": 2, "role": 1}),
         entry("k", "ex", id=8, ext={"position": 5})]
    placement = place(run(e, ["User: k"]).activated)
    # ascending order; ties in reverse activation order (activation: file order)
    assert placement.slots["before_char"] == ["before-1", "tie-b", "tie-a", "before-9"]
    assert placement.slots["after_char"] == ["after-5"]
    assert placement.slots["before_examples"] == ["ex"]
    assert placement.depth_injections == [(2, "user", "depth\ndepth-2")]


def test_missing_v2_position_means_after_char() -> None:
    placement = place(run([entry("k", "x", id=1)], ["User: k"]).activated)
    assert placement.slots == {"after_char": ["x"]}


def test_character_lore_scans_before_global_lore() -> None:
    lore = compile_entries([entry("k", "c" * 400, id="char", order=1)],
                           globals_=[[entry("k", "g" * 400, id="glob", order=99)]])
    assert fired(run(lore, ["User: k"], token_budget=150)) == ["char"]
    evenly = compile_entries([entry("k", "c" * 400, id="char", order=1)],
                             globals_=[[entry("k", "g" * 400, id="glob", order=99)]],
                             strategy="evenly")
    assert fired(run(evenly, ["User: k"], token_budget=150)) == ["glob"]


# --- spec semantics -------------------------------------------------------------------------


def test_spec_semantics_honour_the_card() -> None:
    e = [entry("Dragon", id=1, case_sensitive=True), entry("/drag/", id=2),
         entry(["/DRA/i"], id=3, use_regex=True), entry(["DR[A]"], id=4, use_regex=True)]
    chat = ["User: dragon"]
    # SillyTavern ignores case_sensitive and use_regex; "/.../" keys are always regexes
    assert fired(run(e, chat)) == [1, 2, 3]
    spec = compile_entries(e, spec=True)
    # spec: case honoured, "/drag/" is plain text, use_regex keys are patterns
    assert fired(run(spec, chat, spec=True)) == [3, 4]


def test_spec_budget_drops_lowest_priority_and_keeps_going() -> None:
    e = [entry("k", "a" * 400, id="p1", priority=1, order=99),
         entry("k", "b" * 400, id="p9", priority=9, order=1),
         entry("k", "c", id="p0", priority=0)]
    lore = compile_entries(e, spec=True)
    result = run(lore, ["User: k"], spec=True, token_budget=150)
    assert sorted(fired(result)) == ["p0", "p9"]
    assert [(c.entry.uid, c.tokens, c.reason) for c in result.cut] == [
        ("p1", 101, "over_budget")]  # content + "\n"


def test_spec_book_scan_depth_and_v3_decorators() -> None:
    e = [entry("forest", id=1), entry("nothing", "@@depth 0\n@@role assistant\nhi", id=2,
                                      constant=True)]
    lore = compile_entries(e, book={"scan_depth": 3}, spec=True)
    chat = ["User: the forest", "Seraphina: yes", "User: and then?"]
    result = run(lore, chat, scan_depth=1, spec=True)
    assert sorted(fired(result)) == [1, 2]
    assert place(result.activated).depth_injections == [(0, "assistant", "hi")]


# --- the index agrees with SillyTavern's one-key-at-a-time matcher ---------------------------

_words = st.sampled_from(["cat", "Cat", "dog", "café", "a", "x_y", "don't", "猫", "C++", "the",
                          "forest", "magical forest", "/ca./i", "/^\\x01/", "/dog$/",
                          "/[/", "  spaced  ", "/\\bcat\\b/", "/(?:cat|dog)s?/i",
                          "/c\\w*t/", "/con(cat)+/", "/(?<=x_)y/", "/ß/i", "/İ/i"])
_text = st.lists(st.sampled_from(["cat", "concatenate", "Cat!", "dog.", "cafés", "café",
                                  "x_y", "xx_y", "don't", "猫が", "C++", "the", "magical",
                                  "forest", " ", "\n", "-", "ß", "İ"]), max_size=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=st.lists(_words, min_size=1, max_size=8), parts=_text,
       case_sensitive=st.booleans(), whole=st.booleans())
def test_indexed_matching_equals_reference(keys: list[str], parts: list[str],
                                           case_sensitive: bool, whole: bool) -> None:
    lore = compile_entries([entry(k, id=i) for i, k in enumerate(keys)],
                           case_sensitive=case_sensitive, match_whole_words=whole)
    line = "User: " + "".join(parts)
    # No regex time budget here: on a loaded machine it would skip keys, and this
    # test is about what matches (test_regex_time_budget_caps_a_turn tests the budget).
    scan_module = importlib.import_module("companion_engine.lorebook.scan")
    with mock.patch.object(scan_module, "REGEX_SCAN_BUDGET_S", float("inf")):
        result = scan(lore, [line], ScanOptions(recursive=False, token_budget=10**6),
                      count=estimate_tokens)
    buffer = "\x01" + line.strip()
    expected = [i for i, k in enumerate(keys)
                if st_match(buffer, k, case_sensitive=case_sensitive, whole_words=whole)]
    assert sorted(fired(result)) == expected


def test_regex_time_budget_caps_a_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    scan_module = importlib.import_module("companion_engine.lorebook.scan")
    # ten catastrophic regexes (each stopped by its own timeout), then one that matches
    lore = compile_entries([entry("/(x+x+)+y/", id=i) for i in range(10)]
                           + [entry("/\\s\\S$/", id="late")])
    chat = ["User: " + "x" * 3000 + " y"]
    monkeypatch.setattr(scan_module, "REGEX_SCAN_BUDGET_S", 60.0)
    assert fired(run(lore, chat)) == ["late"]
    monkeypatch.setattr(scan_module, "REGEX_SCAN_BUDGET_S", 0.1)
    assert fired(run(lore, chat)) == []  # the budget ran out before the last regex


@settings(max_examples=300, deadline=None)
@given(content=st.text(alphabet="@ \n\rabc,_:", max_size=40))
def test_decorator_parsing_never_fails_and_keeps_the_rest(content: str) -> None:
    _decorators, rest = parse_decorators(content)
    if not content.startswith("@@"):
        assert rest == content
    else:  # what remains is the content after the decorator lines, untouched
        assert content.endswith(rest)
        assert not rest.split("\n")[0].strip().startswith("@@")


@settings(max_examples=300, deadline=None)
@given(key=st.text(alphabet="/\\()[]{}?*+|^$.gimsuyab<>k", max_size=16))
def test_regex_keys_never_raise(key: str) -> None:
    lore = compile_entries([entry(key, id=1)])
    scan(lore, ["User: ab/ab"], ScanOptions(), count=estimate_tokens)


@pytest.mark.parametrize(("pattern", "flags", "expected"), [
    (r"\bdragons?\b", "i", (("dragon",), True, True)),
    (r"(?:Cat|dog)s", "", (("Cat", "dog"), False, True)),
    (r"x\d+dragon", "", (("dragon",), False, False)),    # "x" starts it but "dragon" is rarer
    (r"(?i)Dragon", "", (("dragon",), True, True)),
    (r"\d+", "", (None, False, False)),
    (r"(a|\d)b", "", (("b",), False, False)),
    (r"drâgon", "i", (None, True, False)),               # Unicode folding: no prefilter
    (r"[", "", (None, False, False)),
])
def test_regex_prefilter(pattern: str, flags: str, expected: tuple[object, ...]) -> None:
    assert prefilter(pattern, flags) == expected
