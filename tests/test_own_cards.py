"""Every card format, tested with the small cards written for this suite (tests/data/cards).

A fresh clone of the repository has these, so every format is covered even when the real
public cards in ../shared are absent (those tests skip with a reason).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from companion_engine.cards.errors import CardError
from companion_engine.cards.export import json_bytes, png_bytes, v2_card
from companion_engine.cards.formats import parse_card, read_yaml_card
from companion_engine.testing import LLMTestServer, Script
from tests.cards_helpers import same_card
from tests.chat_helpers import chat_events, llm_profile, streamed_text
from tests.conftest import OWN_CARDS, MakeClient

#: file -> (source format, name, lorebook entries)
EXPECTED = {
    "nova.v1.json": ("v1", "Nova", 0),
    "pip.pygmalion.json": ("v1", "Pip", 0),
    "orion.v2.json": ("v2", "Orion", 4),
    "lyra.v3.json": ("v3", "Lyra", 1),
    "pixel.v2.png": ("v3", "Pixel", 1),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_format_parses_and_round_trips(name: str) -> None:
    fmt, card_name, entries = EXPECTED[name]
    parsed = parse_card((OWN_CARDS / name).read_bytes())
    card = parsed.character
    assert (card.source_format, card.name) == (fmt, card_name)
    assert len(card.character_book.entries if card.character_book else []) == entries
    assert card.first_mes
    again = parse_card(json_bytes(v2_card(card))).character
    assert same_card(card, again)
    from_png = parse_card(png_bytes(card)).character
    assert same_card(card, from_png)


def test_png_card_prefers_ccv3_and_keeps_its_fields() -> None:
    parsed = parse_card((OWN_CARDS / "pixel.v2.png").read_bytes())
    assert parsed.container == "png"
    assert parsed.character.nickname == "Pix"


def test_v2_card_keeps_unknown_extensions_and_greetings() -> None:
    card = parse_card((OWN_CARDS / "orion.v2.json").read_bytes()).character
    assert card.extensions["x_unknown_tool"] == {"kept": True}
    assert len(card.alternate_greetings) == 2
    v3 = parse_card((OWN_CARDS / "lyra.v3.json").read_bytes()).character
    assert v3.group_only_greetings == ["Hello, everyone. Mind the bell ropes."]
    assert v3.extensions["companion"] == {"voice": "en-gb"}


def test_pygmalion_card_is_converted_with_a_warning() -> None:
    parsed = parse_card((OWN_CARDS / "pip.pygmalion.json").read_bytes())
    assert parsed.character.personality.startswith("A tiny, excitable robot")
    assert any("Pygmalion" in str(w) for w in parsed.warnings)


def test_yaml_card() -> None:
    card = read_yaml_card(OWN_CARDS / "sage.yaml").character
    assert (card.source_format, card.name) == ("yaml", "Sage")
    assert card.character_book is not None and len(card.character_book.entries) == 1


def test_world_info_file_is_not_a_card() -> None:
    with pytest.raises(CardError, match="lorebook"):
        parse_card((OWN_CARDS / "tides.st-worldinfo.json").read_bytes())


def _install(root: Path, *names: str) -> None:
    (root / "characters").mkdir(parents=True, exist_ok=True)
    for name in names:
        stem, *_, ext = name.split(".")
        shutil.copy(OWN_CARDS / name, root / "characters" / f"{stem}.{ext}")


async def test_cards_serve_chat_with_their_lorebooks(make_client: MakeClient, tmp_path: Path,
                                                     llm_server: LLMTestServer) -> None:
    """Every format loads from characters/, and a card's lorebook and a World Info file
    both reach the prompt."""
    _install(tmp_path, "orion.v2.json", "lyra.v3.json", "nova.v1.json", "pixel.v2.png",
             "sage.yaml")
    shutil.copy(OWN_CARDS / "tides.st-worldinfo.json", tmp_path / "tides.json")
    client = await make_client(root=tmp_path, profile={
        **llm_profile(llm_server), "speech": {"enabled": False},
        "prompt": ["system_prompt", {"lorebook": {"files": ["tides.json"]}},
                   "character_definition", "history"]})
    listed = await (await client.get("/api/characters")).json()
    ids = {c["id"] for c in listed["data"]}
    assert {"orion", "lyra", "nova", "pixel", "sage"} <= ids
    body = {"message": "Is the lighthouse safe in a storm tonight at the harbour?",
            "character_id": "orion"}
    preview = await (await client.post("/api/prompt/preview", json=body)).json()
    comments = {x["comment"] for x in preview["lore"]}
    assert {"lamp", "always on", "harbour"} <= comments
    llm_server.push(Script(tokens=["Safe", " enough."]))
    events = await chat_events(client, body)
    assert streamed_text(events) == "Safe enough."
    sent = "\n".join(m["content"] for m in llm_server.requests[-1].body["messages"])
    assert "Fresnel lens" in sent and "The island is called Skarv." in sent
