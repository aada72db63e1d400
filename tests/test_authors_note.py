"""The Author's Note, the card's character note, lorebook AN/example positions and example
dropping; SillyTavern's own rules as vectors (``tests/vectors/st_authors_note.json``,
``st_examples.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from companion_engine.builtin.authors_note import due
from companion_engine.builtin.prompt_builders import example_blocks
from companion_engine.config import Profile
from companion_engine.testing import LLMTestServer
from companion_engine.turn import Turn
from tests.cards_helpers import v2
from tests.chat_helpers import llm_profile
from tests.conftest import MakeClient
from tests.lorebook_helpers import entry

VECTORS = Path(__file__).parent / "vectors"
FREQUENCY = json.loads((VECTORS / "st_authors_note.json").read_text(encoding="utf-8"))
EXAMPLES = json.loads((VECTORS / "st_examples.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", FREQUENCY["cases"],
                         ids=lambda c: f"f{c['frequency']}-u{c['user_messages']}")
def test_note_frequency_as_sillytavern(case: dict[str, Any]) -> None:
    assert due(case["frequency"], case["user_messages"]) is case["inserted"]


@pytest.mark.parametrize("case", EXAMPLES["cases"], ids=lambda c: c["name"])
def test_example_blocks_and_lore_positions_as_sillytavern(case: dict[str, Any]) -> None:
    from companion_engine.cards.formats import card_from_object

    character = card_from_object(v2("C", mes_example=case["mes_example"])).character
    turn = Turn(profile=Profile(), user_message="x", character=character, user_name="U")
    for e in case["world_info_examples"]:
        turn.slots.setdefault(e["position"], []).append(e["content"])
    # (the vectors were made with macros left as they are)
    expected = [b.removeprefix("<START>\n").strip().replace("{{user}}", "U")
                .replace("{{char}}", "C") for b in case["expected"]]
    # SillyTavern keeps an empty block when text precedes a lower-case <start>; we drop it.
    assert example_blocks(turn) == [b for b in expected if b]


def write_card(root: Path, card_id: str, **fields: Any) -> None:
    (root / "characters").mkdir(parents=True, exist_ok=True)
    (root / "characters" / f"{card_id}.json").write_text(
        json.dumps(v2("Nova", **fields)), encoding="utf-8")


def profile(server: LLMTestServer, note: dict[str, Any] | None = None,
            history_tokens: int = 3000, examples: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    return {**llm_profile(server), "character": "nova", "prompt": [
        "system_prompt", "first_message", {"lorebook": {}}, "character_definition",
        {"example_dialogue": examples or {}}, {"authors_note": note or {}},
        {"history": {"max_tokens": history_tokens}}]}


async def preview(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    async with client.post("/api/prompt/preview", json=body) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


def history(n: int) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}
            for i in range(n)] + [{"role": "user", "content": "now"}]


async def test_note_at_depth_wrapped_by_lore_with_the_character_note(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    book = {"entries": [
        entry("now", "top lore", ext={"position": 2}, order=10),
        entry("now", "bottom lore", ext={"position": 3}),
        entry("now", "depth lore", ext={"position": 4, "depth": 2, "role": 0})]}
    write_card(tmp_path, "nova", character_book=book, first_mes="",
               extensions={"depth_prompt": {"prompt": "{{char}} is shy.", "depth": 2,
                                            "role": "system"}})
    client = await make_client(profile=profile(llm_server, {"text": "Write {{user}} a poem.",
                                                            "depth": 2}), root=tmp_path)
    data = await preview(client, {"messages": history(4)})
    contents = [m["content"] for m in data["messages"]]
    # One system message at depth 2: the note (inside its lore), the character note, the lore.
    assert contents[-3] == ("top lore\nWrite User a poem.\nbottom lore\nNova is shy.\n"
                            "depth lore")
    assert contents[-4:] != [] and contents[-2:] == ["message 3", "now"]


async def test_note_frequency_and_position(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    write_card(tmp_path, "nova", first_mes="")
    client = await make_client(profile=profile(
        llm_server, {"text": "NOTE", "frequency": 2, "depth": 0, "role": "user"}), root=tmp_path)
    with_note = await preview(client, {"messages": history(2)})  # 2 user messages
    assert with_note["messages"][-1] == {"role": "user", "content": "NOTE",
                                         "tokens": with_note["messages"][-1]["tokens"]}
    without = await preview(client, {"messages": history(4)})  # 3 user messages
    assert all(m["content"] != "NOTE" for m in without["messages"])

    client = await make_client(profile=profile(llm_server, {"text": "NOTE",
                                                            "position": "after_main"}),
                               root=tmp_path)
    data = await preview(client, {"messages": history(2)})
    assert data["messages"][1]["content"] == "NOTE"


async def test_conversation_override_through_the_api(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    write_card(tmp_path, "nova", first_mes="")
    client = await make_client(profile=profile(llm_server, {"text": "profile note"}),
                               root=tmp_path)
    async with client.post("/api/chat", json={"message": "hi", "conversation_id": "c"}) as r:
        assert r.status == 200
    url = "/api/conversations/c/authors_note"
    async with client.put(url, json={"text": "Be {{char}}-like.", "depth": 0}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["authors_note"]["depth"] == 0
    data = await preview(client, {"message": "next", "conversation_id": "c"})
    assert data["messages"][-1]["content"] == "Be Nova-like."
    assert all(m["content"] != "profile note" for m in data["messages"])
    async with client.get("/api/conversations/c") as r:
        assert (await r.json())["data"]["authors_note"]["text"] == "Be {{char}}-like."
    async with client.delete(url) as r:
        assert r.status == 200
    data = await preview(client, {"message": "next", "conversation_id": "c"})
    assert any(m["content"] == "profile note" for m in data["messages"])

    for bad, status in (({"text": "x", "depth": -1}, 422), ({"text": "x", "role": "narrator"}, 422),
                        ({"text": 5}, 422), ({"text": "x", "frequency": "often"}, 422),
                        ({"text": "x", "extra": 1}, 422), ("not an object", 422)):
        async with client.put(url, json=bad) as r:
            assert r.status in (400, status), (bad, r.status, await r.text())
            assert (await r.json())["success"] is False
    async with client.put(url, data=b"{nope", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
    async with client.put("/api/conversations/missing/authors_note", json={"text": "x"}) as r:
        assert r.status == 404
    async with client.put("/api/conversations/bad%20id/authors_note", json={}) as r:
        assert r.status == 400


async def test_examples_give_up_their_room_to_the_history(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    examples = "<START>\n{{user}}: one\n{{char}}: two\n<START>\n{{user}}: three\n{{char}}: four"
    write_card(tmp_path, "nova", first_mes="", mes_example=examples)
    client = await make_client(profile=profile(llm_server, history_tokens=60), root=tmp_path)
    short = await preview(client, {"messages": history(2)})
    assert sum("[Example Chat]" in m["content"] for m in short["messages"]) == 2
    long = await preview(client, {"messages": history(8)})
    assert sum("[Example Chat]" in m["content"] for m in long["messages"]) < 2
    assert long["tokens"]["history_dropped"] == 0 or long["tokens"]["history"] <= 60

    pinned = await make_client(profile=profile(llm_server, history_tokens=60,
                                               examples={"keep": True}), root=tmp_path)
    data = await preview(pinned, {"messages": history(8)})
    assert sum("[Example Chat]" in m["content"] for m in data["messages"]) == 2

    turns = await make_client(profile=profile(llm_server, history_tokens=45,
                                              examples={"format": "turns"}), root=tmp_path)
    data = await preview(turns, {"messages": history(6)})
    headers = [i for i, m in enumerate(data["messages"]) if m["content"] == "[Example Chat]"]
    for i in headers:  # a header is never left without its lines
        assert data["messages"][i + 1]["role"] in ("user", "assistant")
