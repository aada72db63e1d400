"""Card formats: every real card imports, export -> import is lossless, bad input is a CardError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.cards import png
from companion_engine.cards.errors import CardError
from companion_engine.cards.export import card_data, json_bytes, png_bytes, v2_card, v3_card
from companion_engine.cards.formats import card_from_object, parse_card, read_yaml_card
from tests.cards_helpers import card_files, card_params, card_png, chunk_text, same_card, v2
from tests.conftest import shared_card


def load(name: str) -> Any:
    return json.loads(shared_card(name).read_text(encoding="utf-8"))


# --- the real cards ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", card_params(), ids=lambda p: p.name)
def test_every_real_card_imports_and_round_trips(path: Path) -> None:
    parsed = parse_card(path.read_bytes())
    c = parsed.character
    assert c.name
    raw = load(path.name) if path.suffix == ".json" else None
    if raw is not None:
        data = raw.get("data", raw)
        assert c.description == data["description"]
        assert c.first_mes == data["first_mes"]
        if "extensions" in data:
            assert c.extensions == data["extensions"]
    for exported in (png_bytes(c), json_bytes(v2_card(c)), json_bytes(v3_card(c))):
        again = parse_card(exported).character
        assert same_card(again, c)
        if c.character_book is not None:
            assert again.character_book is not None
            assert [e.model_dump() for e in again.character_book.entries] == \
                   [e.model_dump() for e in c.character_book.entries]


def test_exported_data_keeps_every_original_data_key() -> None:
    """Nothing in a card's data object is lost, down to each lorebook entry."""
    for path in card_files():
        if path.suffix != ".json":
            continue
        raw = load(path.name)
        data = raw.get("data")
        if data is None:
            continue
        out = card_data(parse_card(json_bytes(v2_card(parse_card(path.read_bytes()).character)))
                        .character)
        for key, value in data.items():
            if key == "character_book":
                for i, entry in enumerate(value["entries"]):
                    for k, v in entry.items():
                        assert out["character_book"]["entries"][i][k] == v, (path.name, i, k)
            else:
                assert out[key] == value, (path.name, key)


def test_v1_card_keeps_root_extras_and_png_matches_json() -> None:
    from_png = parse_card(shared_card("megumin.v1.png").read_bytes())
    from_json = parse_card(shared_card("megumin.v1.chara.json").read_bytes())
    assert from_png.container == "png" and from_json.container == "json"
    assert from_png.character.source_format == "v1"
    assert same_card(from_png.character, from_json.character)
    assert set(from_png.character.root_extra) == {"avatar", "chat", "last_mes", "create_date"}
    exported = v2_card(from_png.character)
    assert exported["chat"] == load("megumin.v1.chara.json")["chat"]
    assert exported["name"] == exported["data"]["name"] == "Megumin"


def test_v2_hybrid_reads_data_as_canonical() -> None:
    raw = load("seraphina.v2.chara.json")
    raw["name"] = "Root Name"
    raw["description"] = "root description"
    c = card_from_object(raw).character
    assert c.name == "Seraphina"
    assert c.description == raw["data"]["description"]
    assert c.extensions["world"] == raw["data"]["extensions"]["world"]
    assert c.character_book is not None and len(c.character_book.entries) == 4
    assert "talkativeness" in c.root_extra and "name" not in c.root_extra


def test_sakana_lorebook_selective_entries_survive() -> None:
    c = parse_card(shared_card("sakana.v2.chara.json").read_bytes()).character
    assert c.character_book is not None
    entries = c.character_book.entries
    assert len(entries) == 14
    selective = [e for e in entries if e.selective and e.secondary_keys]
    assert len(selective) >= 4
    assert all("selectiveLogic" in e.extensions for e in entries)


def test_v3_fields_are_kept() -> None:
    c = parse_card(shared_card("tavern_kit.full_v3_card.json").read_bytes()).character
    raw = load("tavern_kit.full_v3_card.json")["data"]
    assert c.source_format == "v3"
    assert c.nickname == raw["nickname"] and c.display_name == raw["nickname"]
    assert c.creator_notes_multilingual == raw["creator_notes_multilingual"]
    assert c.assets == raw["assets"] and c.source == raw["source"]


def test_chara_chunk_labelled_v3_is_read_as_v3() -> None:
    """SillyTavern writes V3-labelled JSON into `chara` too (Amy)."""
    amy = load("amy.v3.ccv3.json")
    c = parse_card(card_png(("chara", chunk_text(amy)))).character
    assert c.source_format == "v3" and c.name == "Amy"


def test_world_info_file_is_not_a_card() -> None:
    with pytest.raises(CardError, match="lorebook / World Info"):
        parse_card(shared_card("eldoria.st-worldinfo.json").read_bytes())


# --- PNG specifics -----------------------------------------------------------------------------


def test_ccv3_is_preferred_over_chara() -> None:
    v3 = {**v2("Three"), "spec": "chara_card_v3", "spec_version": "3.0"}
    data = card_png(("chara", chunk_text(v2("Two"))), ("ccv3", chunk_text(v3)))
    assert parse_card(data).character.name == "Three"


def test_broken_ccv3_falls_back_to_chara_with_a_warning() -> None:
    data = card_png(("chara", chunk_text(v2("Two"))), ("ccv3", "!!not base64!!"))
    parsed = parse_card(data)
    assert parsed.character.name == "Two"
    assert any("ccv3" in w.message and "chara" in w.message for w in parsed.warnings)


@pytest.mark.parametrize("before_idat", [True, False])
def test_card_chunk_is_found_anywhere(before_idat: bool) -> None:
    data = card_png(("Chara", chunk_text(v2("Anywhere"))), before_idat=before_idat)
    assert parse_card(data).character.name == "Anywhere"


def test_raw_json_in_text_chunk_is_accepted() -> None:
    data = card_png(("chara", json.dumps(v2("Raw"))))
    assert parse_card(data).character.name == "Raw"


def test_truncated_png_is_rejected_at_every_cut() -> None:
    data = card_png(("chara", chunk_text(v2())))
    for cut in range(len(png.SIGNATURE), len(data) - 1, 7):
        with pytest.raises(CardError) as info:
            parse_card(data[:cut])
        assert info.value.status == 400
        assert "truncated" in info.value.message or "damaged" in info.value.message


def test_bad_crc_is_rejected() -> None:
    data = bytearray(card_png(("chara", chunk_text(v2()))))
    data[-20] ^= 0xFF  # inside the tEXt payload
    with pytest.raises(CardError, match="CRC") as info:
        parse_card(bytes(data))
    assert info.value.status == 400


@pytest.mark.parametrize(("texts", "status", "message"), [
    ((), 422, "no character card"),
    ((("comment", "hello"),), 422, "no character card"),
    ((("chara", "%%%%"),), 400, "not valid base64"),
    ((("chara", chunk_text([1, 2]).replace("=", "") + "x"),), 400, "not valid base64"),
    ((("chara", "aGVsbG8="),), 400, "not valid JSON"),
    ((("chara", "/w=="),), 400, "not UTF-8"),
    ((("chara", chunk_text([1, 2])),), 422, "expected a JSON object"),
    ((("chara", chunk_text({"spec": "chara_card_v2", "data": {"name": ""}})),), 422,
     "name is empty"),
])
def test_png_card_errors(texts: tuple[tuple[str, str], ...], status: int, message: str) -> None:
    with pytest.raises(CardError, match=message) as info:
        parse_card(card_png(*texts))
    assert info.value.status == status


# --- JSON errors and warnings ------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "status", "message"), [
    (b"\xff\xd8\xff\xe0 jpeg", 415, "JPEG"),
    (b"GIF89a....", 415, "GIF"),
    (b"hello world", 415, "expected a PNG image or a JSON object"),
    (b"", 415, "expected a PNG image or a JSON object"),
    (b'{"name": "x",', 400, "not valid JSON"),
    (b'{"name": NaN}', 400, "NaN"),
    (b'{"name": "\xff"}', 400, "not UTF-8"),
    (b"[1, 2]", 422, "expected a JSON object, got an array"),
    (b'{"description": "no name"}', 422, "no `spec` and no `name`"),
    (b'{"spec": "chara_card_v2", "spec_version": "2.0"}', 422, "`data` must be an object"),
    (b'{"spec": "chara_card_v9", "data": {}}', 422, "unsupported card spec"),
    (b'{"spec": "lorebook_v3", "data": {}}', 422, "lorebook"),
    (b'{"spec": "chara_card_v2", "data": {"name": 5}}', 422, "name must be a string"),
    (b'{"spec": "chara_card_v2", "data": {"name": "a", "character_book": {"entries": 3}}}',
     422, "character_book.entries"),
    (b'{"name": "a", "tags": [1, {}]}', 422, "tags"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
])
def test_json_errors(raw: bytes, status: int, message: str) -> None:
    with pytest.raises(CardError, match=message) as info:
        parse_card(raw)
    assert info.value.status == status


def test_validation_issues_name_the_field() -> None:
    bad = v2(character_book={"entries": [{"keys": "not-a-list", "content": "x"}]})
    with pytest.raises(CardError) as info:
        card_from_object(bad)
    assert info.value.issues[0].path == "data.character_book.entries[0].keys"


def test_warnings_do_not_reject() -> None:
    card = v2(first_mes="", mes_example="no separator", creator=None, character_version=2,
              tags="a, b", character_book={"entries": [{"keys": [], "content": "x"}]})
    card["spec_version"] = "2.1"
    parsed = card_from_object(card)
    paths = {w.path for w in parsed.warnings}
    assert {"spec_version", "data.first_mes", "data.mes_example", "data.creator",
            "data.character_version", "data.tags",
            "data.character_book.entries[0].keys"} <= paths
    c = parsed.character
    assert c.creator == "" and c.character_version == "2" and c.tags == ["a", "b"]


def test_newer_v3_version_warns_but_imports() -> None:
    card = {**v2("Future"), "spec": "chara_card_v3", "spec_version": "3.5"}
    card["data"]["group_only_greetings"] = []
    parsed = card_from_object(card)
    assert parsed.character.name == "Future"
    assert [w.path for w in parsed.warnings] == ["spec_version"]


def test_unknown_keys_everywhere_are_kept() -> None:
    card = v2(extensions={"x/y": {"deep": [1, 2]}}, my_field="kept",
              character_book={"entries": [{"keys": ["k"], "content": "c", "odd": True,
                                           "extensions": {"position": 4}}],
                              "book_extra": 1})
    card["root_thing"] = {"a": 1}
    c = card_from_object(card).character
    again = parse_card(png_bytes(c)).character
    out = card_data(again)
    assert out["my_field"] == "kept" and out["extensions"] == {"x/y": {"deep": [1, 2]}}
    assert out["character_book"]["book_extra"] == 1
    assert out["character_book"]["entries"][0]["odd"] is True
    assert again.root_extra == {"root_thing": {"a": 1}}


def test_store_fields_in_card_data_are_ignored_with_a_warning() -> None:
    parsed = card_from_object(v2(id="../../etc", source_file="/etc/passwd"))
    assert parsed.character.id == "" and parsed.character.source_file is None
    assert {"data.id", "data.source_file"} <= {w.path for w in parsed.warnings}


def test_pygmalion_card_is_converted() -> None:
    c = card_from_object({"char_name": "Pyg", "char_persona": "kind", "char_greeting": "Hi",
                          "world_scenario": "a lab", "example_dialogue": "<START>"}).character
    assert (c.name, c.personality, c.first_mes, c.scenario) == ("Pyg", "kind", "Hi", "a lab")


# --- YAML --------------------------------------------------------------------------------------


def test_yaml_flat_card(tmp_path: Path) -> None:
    path = tmp_path / "nova.yaml"
    path.write_text(
        "name: Nova\n"
        "description: A navigator.\n"
        "first_mes: Hello {{user}}!\n"
        "created: 2024-05-01\n"
        "character_book:\n"
        "  entries:\n"
        "    - keys: [star]\n"
        "      content: Stars are far.\n",
        encoding="utf-8")
    parsed = read_yaml_card(path)
    c = parsed.character
    assert c.source_format == "yaml" and parsed.container == "yaml"
    assert c.name == "Nova" and c.character_book is not None
    assert card_data(c)["created"] == "2024-05-01"
    json.dumps(card_data(c))  # everything is JSON-serialisable


def test_yaml_envelope_card(tmp_path: Path) -> None:
    path = tmp_path / "env.yml"
    path.write_text(json.dumps(v2("Enveloped")), encoding="utf-8")  # JSON is YAML
    assert read_yaml_card(path).character.name == "Enveloped"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("name: A\ndescription: [unclosed\n", 3, "YAML syntax error"),
    ("description: no name\nfirst_mes: hi\n", None, "name missing"),
    ("name: A\ncharacter_book:\n  entries:\n    - keys: 5\n", 4, "keys"),
])
def test_yaml_errors_point_at_a_line(tmp_path: Path, text: str, line: int | None,
                                     message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CardError, match=message) as info:
        read_yaml_card(path)
    if line is not None:
        assert info.value.line == line


# --- fuzzing -----------------------------------------------------------------------------------

VALID_PNG = card_png(("chara", chunk_text(v2("Fuzz", character_book={
    "entries": [{"keys": ["a"], "content": "b"}]}))))
VALID_JSON = json.dumps(v2("Fuzz")).encode()


def _outcome(data: bytes) -> None:
    try:
        parsed = parse_card(data)
    except CardError as exc:
        assert exc.message and 400 <= exc.status < 500
        return
    assert parsed.character.name.strip()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_give_a_card_or_a_clear_error(data: bytes) -> None:
    _outcome(data)
    _outcome(png.SIGNATURE + data)


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            del data[pos:pos + draw(st.integers(1, 16))]
    return bytes(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(VALID_PNG))
def test_mutated_pngs_give_a_card_or_a_clear_error(data: bytes) -> None:
    _outcome(data)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(VALID_JSON))
def test_mutated_json_gives_a_card_or_a_clear_error(data: bytes) -> None:
    _outcome(data)


@settings(max_examples=200)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.sampled_from(
                        ["name", "spec", "data", "description", "character_book", "entries",
                         "keys", "tags", "extensions", "first_mes", "spec_version", "x"]),
                        kids, max_size=6),
                    max_leaves=30))
def test_random_objects_give_a_card_or_a_clear_error(obj: Any) -> None:
    try:
        parsed = card_from_object(obj)
    except CardError as exc:
        assert exc.message and exc.status == 422
        return
    json.dumps(card_data(parsed.character))


def test_flat_card_with_v2_fields_keeps_them_as_card_data() -> None:
    """A bare card sent to the API (no `spec`) may use any V2 field at the top level."""
    flat = {"name": "Flat", "system_prompt": "{{original}} Be brief.", "creator": "me",
            "extensions": {"x/y": 1}, "alternate_greetings": ["Yo"], "avatar": "none",
            "character_book": {"entries": [{"keys": ["k"], "content": "c"}]},
            "creatorcomment": "notes"}
    c = card_from_object(flat).character
    assert c.system_prompt == "{{original}} Be brief." and c.creator == "me"
    assert c.extensions == {"x/y": 1} and c.alternate_greetings == ["Yo"]
    assert c.character_book is not None and c.creator_notes == "notes"
    assert c.root_extra == {"avatar": "none"}
    assert same_card(parse_card(png_bytes(c)).character, c)
