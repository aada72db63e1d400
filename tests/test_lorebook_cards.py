"""Real lorebooks (public cards in ../shared/research/cards), bad lorebooks, files, the stage."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.builtin.lorebook import LorebookStage
from companion_engine.config import Profile
from companion_engine.lorebook import (
    CompileSettings,
    LorebookFiles,
    ScanOptions,
    Source,
    compile_lore,
    from_character_book,
    from_object,
    place,
    scan,
)
from companion_engine.tokens import estimate_tokens
from companion_engine.turn import Turn
from tests.conftest import shared_card
from tests.lorebook_helpers import card, entry, fired, run


def seraphina_lore(**settings: Any):  # type: ignore[no-untyped-def]
    ch = card("seraphina.v2.chara.json")
    assert ch.character_book is not None
    return compile_lore([Source(from_character_book(ch.character_book, ch.name))],
                        CompileSettings(char_name=ch.name, user_name="User", **settings))


# --- Seraphina's Eldoria book ---------------------------------------------------------------


def test_seraphina_forest_and_monsters() -> None:
    lore = seraphina_lore()
    result = run(lore, ["Seraphina: Rest now.", "User: What lives in this forest?"],
                 recursive=False)
    assert fired(result) == [0]
    assert result.activated[0].matched == "forest"
    result = run(lore, ["User: Are there monsters out there?"], recursive=False)
    assert fired(result) == [1]
    assert result.activated[0].matched == "monsters"
    # whole words: "forested" is not "forest"; "monstrous" is no monster
    assert fired(run(lore, ["User: a forested, monstrous land"], recursive=False)) == []


def test_seraphina_multi_word_key_and_placement() -> None:
    lore = seraphina_lore()
    result = run(lore, ["User: is this glade a safe haven?"], recursive=False,
                 token_budget=10_000)
    assert fired(result) == [2]
    placement = place(result.activated)
    assert list(placement.slots) == ["before_char"]
    content = placement.slots["before_char"][0]
    assert content.startswith('User: "What is the glade?"')  # {{user}} expanded
    assert "{{char}}" not in content and "Seraphina" in content


def test_seraphina_recursion_and_budget() -> None:
    lore = seraphina_lore()
    # the Eldoria entry mentions Shadowfangs, beasts and magic: recursion pulls them in
    big = run(lore, ["User: tell me about the forest"], token_budget=100_000)
    assert fired(big)[0] == 0 and set(fired(big)) >= {0, 1}
    assert big.passes >= 2
    small = run(lore, ["User: tell me about the forest"], token_budget=200)
    assert fired(small) == [] and small.overflowed  # the one entry alone is > 200 tokens


def test_eldoria_world_info_file_equals_the_card_book() -> None:
    native = from_object(json.loads(shared_card("eldoria.st-worldinfo.json").read_text()),
                         "Eldoria")
    ch = card("seraphina.v2.chara.json")
    assert ch.character_book is not None
    book = from_character_book(ch.character_book, "Eldoria")
    assert not native.warnings and not book.warnings

    def essentials(b):  # type: ignore[no-untyped-def]
        return [(e.uid, e.keys, e.secondary_keys, e.content.replace("\r\n", "\n"), e.order,
                 e.position, e.constant, e.selective, e.disabled) for e in b.entries]

    assert essentials(native) == essentials(book)


# --- Sakana's selective entries -------------------------------------------------------------


def sakana(chat: list[str]) -> list[Any]:
    ch = card("sakana.v2.chara.json")
    assert ch.character_book is not None
    lore = compile_lore([Source(from_character_book(ch.character_book, ch.name))],
                        CompileSettings(char_name=ch.name, user_name="User"))
    return fired(scan(lore, list(reversed(chat)), ScanOptions(recursive=False,
                                                              token_budget=100_000),
                      count=estimate_tokens))


def test_sakana_selective_entries_need_a_secondary_key() -> None:
    assert 7 in sakana(["User: Do you like me?"])          # like + me
    assert 7 not in sakana(["User: I like pizza."])        # no "me"
    assert 7 not in sakana(["User: I like to meet people."])  # "meet" is not "me"
    assert 9 in sakana(["User: Are you in love with me?"])
    assert 11 in sakana(["User: *I touch your face.*"])    # multi-word secondary key
    assert 11 not in sakana(["User: *I touch the table.*"])
    assert 12 in sakana(["User: I hold your left hand"])


def test_sakana_plain_entries_and_duplicate_keys() -> None:
    fired_ = sakana(["User: Can you check my essay?"])  # "check" is listed twice in entry 1
    assert 1 in fired_
    assert 3 in sakana(["User: Kiana Kaslana!"])


def test_sakana_positions_and_macros_in_comments() -> None:
    ch = card("sakana.v2.chara.json")
    assert ch.character_book is not None
    book = from_character_book(ch.character_book, ch.name)
    assert {e.position for e in book.entries} == {"after_char"}
    assert book.entries[13].prevent_recursion and book.entries[3].exclude_recursion


# --- spec semantics on a V3 book ------------------------------------------------------------


def test_tavern_kit_book_settings_in_spec_mode() -> None:
    ch = card("tavern_kit.with_lorebook.json")
    assert ch.character_book is not None
    lore = compile_lore([Source(from_character_book(ch.character_book, ch.name, spec=True))],
                        CompileSettings(spec=True))
    assert (lore.scan_depth, lore.token_budget, lore.recursive_scanning) == (2, 512, False)
    chat = ["User: a lore test", "Bot: ok", "User: another entry with conditional key"]
    result = scan(lore, list(reversed(chat)), ScanOptions(spec=True, token_budget=512),
                  count=estimate_tokens)
    assert sorted(fired(result)) == [2]  # entry 1 is 3 messages back: beyond scan_depth 2


# --- bad lorebooks: warnings, never crashes -------------------------------------------------


BAD_BOOK = {"entries": [
    1, "text", None,
    {"keys": "alpha, beta", "content": "comma keys"},
    {"keys": [1, None, {"x": 1}, "ok"], "content": "mixed keys"},
    {"key": ["/[broken/"], "content": "bad regex", "uid": 7},
    {"keys": [], "content": "no keys"},
    {"keys": ["huge"], "content": "x" * 60_000},
    {"keys": ["order"], "insertion_order": "high", "content": "bad order"},
    {"keys": ["ext"], "extensions": "oops", "content": 42},
    {"keys": ["deco"], "content": "@@frobnicate 3\nreal content"},
]}


def test_bad_lorebook_gives_warnings_not_errors() -> None:
    book = from_object(BAD_BOOK, "bad")
    text = "\n".join(book.warnings)
    assert "not an object" in text
    assert "can never activate" in text
    assert "60,000 characters" in text
    assert "'high' is not a number" in text
    assert "content is int" in text
    assert "@@frobnicate" in text
    lore = compile_lore([Source(book)], CompileSettings())
    assert any("invalid regex" in w for w in lore.warnings)
    result = scan(lore, ["User: alpha ok /[broken/ order deco huge"],
                  ScanOptions(recursive=False, token_budget=1000), count=estimate_tokens)
    assert [a.content for a in result.activated] == ["comma keys", "mixed keys", "bad regex"]
    # the huge entry never fits; as in SillyTavern the first overflow ends the scan
    assert result.overflowed
    assert [e.content for e in result.dropped] == ["x" * 60_000, "bad order", "real content"]


def test_not_a_lorebook_at_all() -> None:
    for data in ([], "x", {"entries": 5}, {"spec": "lorebook_v3", "data": None}):
        book = from_object(data, "junk")
        assert book.entries == [] and book.warnings


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["keys", "key", "content", "extensions", "position",
                                       "insertion_order", "order", "selective",
                                       "secondary_keys", "constant", "enabled", "uid", "id",
                                       "probability", "depth", "role", "selectiveLogic",
                                       "scan_depth", "group", "delay_until_recursion",
                                       "use_regex", "case_sensitive"]), children, max_size=6),
    max_leaves=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(json_values, max_size=6), text=st.text(max_size=60),
       spec=st.booleans())
def test_any_json_lorebook_compiles_and_scans(entries: list[Any], text: str,
                                              spec: bool) -> None:
    book = from_object({"entries": entries}, "fuzz", spec=spec)
    lore = compile_lore([Source(book)], CompileSettings(spec=spec))
    result = scan(lore, [text], ScanOptions(token_budget=50, spec=spec),
                  count=estimate_tokens)
    place(result.activated)


# --- lorebook files -------------------------------------------------------------------------


def test_files_are_reread_only_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "world.json"
    path.write_text(json.dumps({"entries": {"0": {"uid": 0, "key": ["moon"],
                                                   "content": "The moon is red."}}}))
    files = LorebookFiles()
    first = files.load([path])[0]
    assert files.load([path])[0] is first
    path.write_text(json.dumps({"entries": {"0": {"uid": 0, "key": ["sun"],
                                                   "content": "The sun is blue."}}}))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = files.load([path])[0]
    assert second is not first and second.entries[0].keys == ("sun",)


def test_missing_and_broken_files_are_warnings(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    books = LorebookFiles().load([tmp_path / "missing.json", broken])
    assert [b.entries for b in books] == [[], []]
    assert "cannot read" in books[0].warnings[0] and "cannot parse" in books[1].warnings[0]


# --- the stage ------------------------------------------------------------------------------


async def test_stage_records_lore_and_caches_the_compile(tmp_path: Path) -> None:
    world = tmp_path / "world.json"
    world.write_text(json.dumps({"entries": [entry("dragon", "Dragons sleep in {{user}}'s "
                                                   "cellar.", id="d",
                                                   ext={"position": 4, "depth": 1,
                                                        "role": 2})]}))
    stage = LorebookStage(LorebookStage.Options(files=[str(world)], seed=3, recursive=False))
    ch = card("seraphina.v2.chara.json")
    for _ in range(3):
        turn = Turn(profile=Profile(), user_message="A dragon in the forest?", character=ch,
                    user_name="Kai")
        await stage.inject(turn)
    assert stage.cache.compiles == 1
    assert [(x.id, x.source, x.position) for x in turn.lore] == [
        (0, "Seraphina", "before_char"), ("d", "world", "at_depth")]
    assert turn.lore[1].depth == 1 and turn.lore[1].role == "assistant"
    assert turn.depth_injections == [(1, "assistant", "Dragons sleep in Kai's cellar.")]
    assert turn.slots["before_char"][0].startswith('Kai: "What is Eldoria?"')
    assert turn.lorebook_info is not None and turn.lorebook_info.activated == 2
    # a new Character object (the card changed) compiles again
    turn = Turn(profile=Profile(), user_message="x", character=card("seraphina.v2.chara.json"))
    await stage.inject(turn)
    assert stage.cache.compiles == 2


async def test_stage_scans_the_greeting_and_respects_scan_depth() -> None:
    ch = card("seraphina.v2.chara.json")
    stage = LorebookStage(LorebookStage.Options(recursive=False, token_budget=5000))
    turn = Turn(profile=Profile(), user_message="Where am I?", character=ch)
    turn.greeting = "You are in my glade."
    await stage.inject(turn)
    assert [x.id for x in turn.lore] == [2]
    turn = Turn(profile=Profile(), user_message="Where am I?", character=ch,
                history=[{"role": "assistant", "content": "the glade"},
                         {"role": "user", "content": "hm"},
                         {"role": "assistant", "content": "yes"}])
    await stage.inject(turn)
    assert turn.lore == []


def test_compiled_cache_is_bounded() -> None:
    from companion_engine.lorebook import LoreCache

    cache = LoreCache(size=3, max_entries=5)
    books = [from_object({"entries": [entry("k", id=i) for i in range(n)]}, f"b{n}")
             for n in (1, 2, 3, 4)]
    for book in books:
        cache.put((book,), "s", compile_lore([Source(book)], CompileSettings()))
    # 4 + 3 entries > 5: only the newest is kept
    assert len(cache) == 1 and cache.get((books[3],), "s") is not None
    assert cache.get((books[0],), "s") is None
    small = LoreCache(size=2)
    for book in books:
        small.put((book,), "s", compile_lore([Source(book)], CompileSettings()))
    assert len(small) == 2
    # an equal-looking but different object never hits
    twin = from_object({"entries": [entry("k", id=i) for i in range(4)]}, "b4")
    assert small.get((twin,), "s") is None
