"""Group chats: SillyTavern's reply orders (vectors from its own code), each speaker with
its own card, name and voice, over real HTTP to the scripted LLM server."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.cards.model import Character
from companion_engine.chat.kinds import strip_prefix
from companion_engine.chat.speakers import natural_order, next_speaker, talkativeness, words
from companion_engine.config import GROUP_NUDGE
from companion_engine.testing import LLMTestServer, Script
from tests.chat_helpers import chat_events, llm_profile, names
from tests.conftest import MakeClient
from tests.conversation_helpers import conversation, send, write_card

VECTORS = json.loads((Path(__file__).parent / "vectors" / "st_group_natural.json").read_text())


class Scripted(random.Random):
    """The random numbers a vector was computed with, and SillyTavern's shuffle stubbed
    out (the vectors' generator shuffles nothing either)."""

    def __init__(self, rolls: list[float]) -> None:
        super().__init__(0)
        self.rolls = list(rolls)

    def random(self) -> float:
        return self.rolls.pop(0)

    def shuffle(self, x: Any) -> None:  # type: ignore[override]
        pass


def card(name: str, talk: Any = 0.5) -> Character:
    return Character(id=name.lower().replace(" ", "-"), name=name,
                     extensions={"talkativeness": talk})


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"{c['input']}/{c['rolls']}")
def test_natural_order_matches_sillytavern(case: dict[str, Any]) -> None:
    members = [card(n, t) for n, t in case["members"]]
    last = case["last_speaker"]
    rng = Scripted(case["rolls"])
    got = natural_order(members, case["input"],
                        last_speaker=last.lower() if last else None,
                        user_input=case["user_input"],
                        allow_self_responses=case["allow_self_responses"], rng=rng)
    assert [m.name for m in got] == case["activated"]
    assert len(case["rolls"]) - len(rng.rolls) == case["used"]


def test_names_words_and_talkativeness() -> None:
    assert words("Hey BOB, où est Zoë? 東京!") == ["hey", "bob", "où", "est", "zoë", "東京"]
    assert [talkativeness(card("A", t)) for t in ("0.7", 2, -1, "x", None, float("nan"))] == [
        0.7, 1.0, 0.0, 0.5, 0.5, 0.5]
    # a V3 nickname is a name the user may call the character by
    members = [Character(id="sera", name="Seraphina", nickname="Sera",
                         extensions={"talkativeness": 0}), card("Bob", 0)]
    assert [m.id for m in natural_order(members, "sera?", last_speaker=None, user_input=True,
                                        rng=random.Random(1))] == ["sera"]
    ann, bob, cid = card("Ann"), card("Bob"), card("Cid")
    assert next_speaker("list", [ann, bob, cid], "", last_speaker="bob") is cid
    assert next_speaker("list", [ann, bob, cid], "", last_speaker="cid") is ann
    assert next_speaker("list", [ann, bob, cid], "", last_speaker=None) is ann
    assert next_speaker("manual", [ann, bob], "", last_speaker=None) is None


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def client(make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path
                 ) -> TestClient:
    write_card(tmp_path, "ann", "Ann", first_mes="Ann waves.", talkativeness=0,
               description="Ann is a baker.", extensions={"companion": {"voice": "en-gb"}})
    write_card(tmp_path, "bob", "Bob", first_mes="Bob nods.", talkativeness=0,
               description="Bob is a smith.", extensions={"companion": {"voice": "en-us"}})
    write_card(tmp_path, "cid", "Cid", talkativeness=1, description="Cid is a bard.")
    return await make_client(profile={**llm_profile(llm_server), "user_name": "Zoe",
                                      "speech": {"enabled": False}})


def sent(llm: LLMTestServer, n: int) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in llm.requests[n].body["messages"]]


async def group(client: TestClient, cid: str, order: str = "natural",
                members: tuple[str, ...] = ("ann", "bob", "cid")) -> dict[str, Any]:
    made = await send(client, "POST", "/api/conversations",
                      json={"character_ids": list(members), "reply_order": order,
                            "conversation_id": cid})
    return made["data"]


async def test_natural_order_mentioned_first_then_the_talkative(
        client: TestClient, llm_server: LLMTestServer) -> None:
    await group(client, "n1")
    llm_server.push(Script(tokens=["Bob", ": Steel", " is hot."]), Script(tokens=["I sing."]))
    events = await chat_events(client, {"message": "Bob, is the forge lit?",
                                        "conversation_id": "n1"})
    # Bob is named; Ann (talkativeness 0) stays quiet; Cid (1) always speaks up
    assert names(events).count("provider_connected") == 2 and names(events)[-1] == "done"
    speakers = [d["character_id"] for n, d in events if n in ("provider_connected", "done")]
    assert speakers == ["bob", "bob", "cid", "cid"]
    stored = (await conversation(client, "n1"))["messages"]
    assert [(m["role"], m["content"], (m.get("meta") or {}).get("character_id"))
            for m in stored] == [
        ("assistant", "Ann waves.", "ann"), ("assistant", "Bob nods.", "bob"),
        ("user", "Bob, is the forge lit?", None),
        ("assistant", "Steel is hot.", "bob"),  # the speaker's own "Bob:" dropped
        ("assistant", "I sing.", "cid")]

    bob_prompt, cid_prompt = sent(llm_server, -2), sent(llm_server, -1)
    # each speaker its own card, everyone's name on their messages, the group nudge last
    assert ("system", "Bob is a smith.") in bob_prompt
    assert ("system", "Ann is a baker.") not in bob_prompt
    assert bob_prompt[-3:] == [("assistant", "Bob: Bob nods."),
                               ("user", "Bob, is the forge lit?"),
                               ("system", GROUP_NUDGE.replace("{{char}}", "Bob"))]
    assert ("system", "Cid is a bard.") in cid_prompt
    assert cid_prompt[-3:] == [("user", "Bob, is the forge lit?"),
                               ("assistant", "Bob: Steel is hot."),
                               ("system", "[Write the next reply only as Cid.]")]
    assert cid_prompt[0][1].startswith("Write Cid's next reply")


async def test_list_order_and_the_json_reply(client: TestClient,
                                             llm_server: LLMTestServer) -> None:
    await group(client, "l1", "list", ("cid", "ann"))
    llm_server.push(Script(tokens=["One."]), Script(tokens=["Two."]))
    reply = await send(client, "POST", "/api/chat",
                       json={"message": "Hello all", "conversation_id": "l1"})
    assert reply["content"] == "One."
    assert [(r["character_id"], r["character"], r["content"]) for r in reply["replies"]] == [
        ("cid", "Cid", "One."), ("ann", "Ann", "Two.")]
    # one speaker asked for by name
    llm_server.push(Script(tokens=["Just me."]))
    events = await chat_events(client, {"message": "Ann?", "conversation_id": "l1",
                                        "character_id": "ann"})
    assert [d["character_id"] for n, d in events if n == "done"] == ["ann"]
    await send(client, "POST", "/api/chat", 409,
               json={"message": "x", "conversation_id": "l1", "character_id": "bob"})


async def test_manual_order_and_reply_by_name(client: TestClient,
                                              llm_server: LLMTestServer) -> None:
    data = await group(client, "m1", "manual")
    refused = await send(client, "POST", "/api/chat", 409,
                         json={"message": "Hi", "conversation_id": "m1"})
    assert "character_id" in refused["error"]
    assert (await conversation(client, "m1"))["version"] == data["version"]  # nothing stored
    added = await send(client, "POST", "/api/conversations/m1/messages",
                       json={"content": "Hi both", "version": 1})
    assert (added["version"], added["message"]["role"]) == (2, "user")
    llm_server.push(Script(tokens=["Hi, Zoe."]))
    async with client.post("/api/conversations/m1/reply?character_id=ann") as resp:
        assert resp.status == 200
        await resp.read()
    assert sent(llm_server, -1)[-2:] == [("user", "Hi both"),
                                         ("system", "[Write the next reply only as Ann.]")]
    await send(client, "POST", "/api/conversations/m1/reply", 409)  # manual: name one
    await send(client, "POST", "/api/conversations/m1/reply?character_id=nobody", 409)
    await send(client, "POST", "/api/conversations/m1/reply?character_id=Bad!", 422)
    await send(client, "POST", "/api/conversations/m1/reply?character_id=ann&x=1", 422)
    await send(client, "POST", "/api/conversations/none/reply?character_id=ann", 404)
    await send(client, "POST", "/api/conversations/m1/messages", 422,
               json={"content": "x", "role": "user", "character_id": "ann"})
    await send(client, "POST", "/api/conversations/m1/messages", 409,
               json={"content": "x", "version": 1})

    # Bob answers next, seeing Ann's reply under her name; then regenerate is Bob's again
    llm_server.push(Script(tokens=["Hello."]), Script(tokens=["Hey there."]))
    async with client.post("/api/conversations/m1/reply?character_id=bob") as resp:
        await resp.read()
    assert sent(llm_server, -1)[-2:] == [("assistant", "Ann: Hi, Zoe."),
                                         ("system", "[Write the next reply only as Bob.]")]
    async with client.post("/api/conversations/m1/regenerate") as resp:
        await resp.read()
    last = (await conversation(client, "m1"))["messages"][-1]
    assert (last["swipes"], last["meta"]["character_id"]) == (["Hello.", "Hey there."], "bob")
    assert ("system", "Bob is a smith.") in sent(llm_server, -1)


async def test_reply_without_a_name_follows_the_list(client: TestClient,
                                                    llm_server: LLMTestServer) -> None:
    await group(client, "q1", "list", ("ann", "bob"))
    llm_server.push(Script(tokens=["A."]), Script(tokens=["B."]), Script(tokens=["A again."]))
    await chat_events(client, {"message": "Go", "conversation_id": "q1"})
    async with client.post("/api/conversations/q1/reply") as resp:
        await resp.read()
    stored = (await conversation(client, "q1"))["messages"]
    assert [(m["content"], m["meta"].get("character_id")) for m in stored[-3:]] == [
        ("A.", "ann"), ("B.", "bob"), ("A again.", "ann")]


async def test_each_speaker_speaks_with_the_voice_of_its_card(
        client: TestClient, llm_server: LLMTestServer) -> None:
    await group(client, "v1", "list", ("ann", "bob"))
    llm_server.push(Script(tokens=["Fresh bread."]), Script(tokens=["Hot iron."]))
    events = await chat_events(client, {"message": "Hi", "conversation_id": "v1",
                                        "enable_tts": True})
    audio = [(d["sentence"], d["voice"]) for n, d in events if n == "audio_ready"]
    assert audio == [("Fresh bread.", "en-gb"), ("Hot iron.", "en-us")]


# --- the reply's text: a speaker's own name dropped, in any chunking ----------------------


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


async def collect(source: Any) -> str:
    return "".join([piece async for piece in source])


async def agen(pieces: list[str]) -> Any:
    for p in pieces:
        yield p


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["", " ", "Bob:", "Bob: ", "  Bob:  ", "Bo", "Bob", "Bobby: ", "bob: "]),
       st.text(alphabet="ab :\n,.", max_size=12), st.lists(st.integers(0, 40), max_size=6))
async def test_strip_prefix_in_any_chunking(lead: str, rest: str, cuts: list[int]) -> None:
    text = lead + rest
    got = await collect(strip_prefix(agen(chunked(text, cuts)), "Bob:"))
    stripped = text.lstrip()
    expected = stripped[4:].lstrip() if stripped.startswith("Bob:") else text
    assert got == expected


async def test_preview_shows_a_group_speakers_prompt(client: TestClient) -> None:
    await group(client, "pv", "list", ("bob", "ann"))
    async with client.post("/api/prompt/preview",
                           json={"message": "Hi", "conversation_id": "pv"}) as resp:
        data = await resp.json()
        assert resp.status == 200, data
    assert data["character"] == "bob"
    assert [m["content"] for m in data["messages"]][-2:] == [
        "Hi", "[Write the next reply only as Bob.]"]
