"""Generated turns on stored conversations: regenerate (swipes), continue (nudge and
prefill), a failed turn retried (issue 19.9), concurrent first turns storing one greeting
(issue 19.2) — over real HTTP to the scripted LLM server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from companion_engine.config import CONTINUE_NUDGE
from companion_engine.keys import ENGINE
from companion_engine.store import StoredMessage
from companion_engine.testing import LLMTestServer, Script
from tests.chat_helpers import chat_events, llm_profile, names, parse_sse, streamed_text
from tests.conftest import MakeClient
from tests.conversation_helpers import conversation, send, write_card


async def sse(client: TestClient, path: str, body: dict[str, Any] | None = None,
              status: int = 200) -> list[tuple[str, dict[str, Any]]]:
    kwargs = {"json": body} if body is not None else {}
    async with client.post(path, **kwargs) as resp:
        text = await resp.text()
        assert resp.status == status, text
        if status != 200:
            return []
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return parse_sse(text)


def sent(llm: LLMTestServer, n: int = -1) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in llm.requests[n].body["messages"]]


@pytest.fixture
async def client(make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path
                 ) -> TestClient:
    write_card(tmp_path, "ann", "Ann", first_mes="Hello, {{user}}.")
    return await make_client(profile={**llm_profile(llm_server), "character": "ann",
                                      "user_name": "Zoe"})


async def test_regenerate_keeps_the_old_reply_as_a_swipe(client: TestClient,
                                                         llm_server: LLMTestServer) -> None:
    llm_server.push(Script(tokens=["First", " answer."]), Script(tokens=["Second", "."]))
    await chat_events(client, {"message": "Hi", "conversation_id": "r1"})
    original = sent(llm_server)
    before = await conversation(client, "r1")
    events = await sse(client, "/api/conversations/r1/regenerate",
                       {"version": before["version"]})
    assert names(events)[0] == "provider_connected" and names(events)[-1] == "done"
    assert events[0][1]["character_id"] == "ann" and events[-1][1]["character_id"] == "ann"
    assert streamed_text(events) == events[-1][1]["full_content"] == "Second."
    assert sent(llm_server) == original  # the same prompt, the old reply not in it
    after = await conversation(client, "r1")
    last = after["messages"][-1]
    assert (last["swipes"], last["swipe_index"], last["content"]) == (
        ["First answer.", "Second."], 1, "Second.")
    assert last["id"] == before["messages"][-1]["id"]
    assert len(after["messages"]) == 3 and after["version"] == before["version"] + 1
    await send(client, "POST", "/api/conversations/r1/regenerate", 409,
               json={"version": before["version"]})

    # the chosen swipe is what the next turn's history carries
    await send(client, "POST", "/api/conversations/r1/messages/2/swipe",
               json={"swipe_index": 0, "version": after["version"]})
    llm_server.push(Script(tokens=["Ok."]))
    await chat_events(client, {"message": "And?", "conversation_id": "r1"})
    assert sent(llm_server)[-3:] == [("user", "Hi"), ("assistant", "First answer."),
                                     ("user", "And?")]


async def test_a_failed_turn_is_retried_in_place(client: TestClient,
                                                 llm_server: LLMTestServer) -> None:
    """Issue 19.9, the other remedy: regenerate replaces the failed reply."""
    llm_server.push(Script(status=503, error_message="down"), Script(tokens=["Here."]))
    assert names(await chat_events(client, {"message": "Hi", "conversation_id": "f1"})) == [
        "error"]
    failed = await conversation(client, "f1")
    assert [m["status"] for m in failed["messages"]] == ["complete", "complete", "error"]
    events = await sse(client, "/api/conversations/f1/regenerate")
    assert names(events)[-1] == "done"
    assert sent(llm_server).count(("user", "Hi")) == 1
    after = await conversation(client, "f1")
    assert [(m["role"], m["content"], m["status"]) for m in after["messages"]] == [
        ("assistant", "Hello, Zoe.", "complete"), ("user", "Hi", "complete"),
        ("assistant", "Here.", "complete")]
    assert after["messages"][2]["swipes"] == ["Here."]  # the failure is not an alternative
    # a regenerate that fails changes nothing
    llm_server.push(Script(status=500))
    assert names(await sse(client, "/api/conversations/f1/regenerate"))[-1] == "error"
    assert (await conversation(client, "f1"))["messages"] == after["messages"]


async def test_regenerate_refusals(client: TestClient, llm_server: LLMTestServer) -> None:
    await send(client, "POST", "/api/conversations", json={"conversation_id": "g0"})
    greeting_only = await send(client, "POST", "/api/conversations/g0/regenerate", 409)
    assert "greeting" in greeting_only["error"]
    await send(client, "POST", "/api/conversations/none/regenerate", 404)
    await send(client, "POST", "/api/conversations", json={"conversation_id": "e0",
                                                           "character_id": "ann"})
    engine = client.app[ENGINE]  # type: ignore[index]
    await engine.store.delete_messages("e0", 0, expected_version=None)
    await send(client, "POST", "/api/conversations/e0/regenerate", 409)
    await send(client, "POST", "/api/conversations/e0/continue", 409)
    for bad in ({"version": "1"}, {"version": 0}, {"nope": 1}, {"voice": "../x"},
                {"model": "bad model"}, {"audio_format": "flac"}, {"enable_tts": "yes"}):
        body = await send(client, "POST", "/api/conversations/g0/regenerate", 422, json=bad)
        assert body["success"] is False, bad
    assert llm_server.requests == []


async def test_regenerate_answers_a_last_user_message(client: TestClient,
                                                      llm_server: LLMTestServer) -> None:
    llm_server.push(Script(tokens=["One."]), Script(tokens=["Two."]))
    await chat_events(client, {"message": "Hi", "conversation_id": "u1"})
    conv = await conversation(client, "u1")
    await send(client, "DELETE", f"/api/conversations/u1/messages/2?version={conv['version']}")
    await sse(client, "/api/conversations/u1/regenerate")
    after = await conversation(client, "u1")
    assert [m["content"] for m in after["messages"]] == ["Hello, Zoe.", "Hi", "Two."]


async def seed_partial(client: TestClient, cid: str, partial: str) -> None:
    engine = client.app[ENGINE]  # type: ignore[index]
    await engine.store.append_messages(cid, [
        StoredMessage("user", "Tell me a story"),
        StoredMessage("assistant", partial, "interrupted",
                      meta={"character_id": "ann", "character": "Ann"})], character_id="ann")


async def test_continue_with_the_nudge_appends_to_the_reply(client: TestClient,
                                                           llm_server: LLMTestServer) -> None:
    await seed_partial(client, "c1", "Once upon a")
    llm_server.push(Script(tokens=["time", " there was a cat."]))
    events = await sse(client, "/api/conversations/c1/continue")
    assert names(events)[-1] == "done"
    # the streamed text is exactly what was appended: the space a continuation needs first
    assert streamed_text(events) == events[-1][1]["full_content"] == " time there was a cat."
    prompt = sent(llm_server)
    nudge = CONTINUE_NUDGE.replace("{{lastChatMessage}}", "Once upon a")
    assert prompt[-3:] == [("user", "Tell me a story"), ("assistant", "Once upon a"),
                           ("system", nudge)]
    after = await conversation(client, "c1")
    last = after["messages"][-1]
    assert (last["content"], last["status"]) == ("Once upon a time there was a cat.",
                                                 "complete")
    assert last["meta"]["continued"] is True and len(after["messages"]) == 2

    # punctuation is glued on; an interrupted continuation keeps what it got
    await seed_partial(client, "c2", "She smiled")
    llm_server.push(Script(tokens=[", and", " waved."]))
    await sse(client, "/api/conversations/c2/continue")
    assert (await conversation(client, "c2"))["messages"][-1]["content"] == (
        "She smiled, and waved.")
    # nothing to continue after a user message
    await send(client, "POST", "/api/chat", json={"message": "x", "conversation_id": "c3"})
    engine = client.app[ENGINE]  # type: ignore[index]
    await engine.store.delete_messages("c3", 2, expected_version=None)
    await send(client, "POST", "/api/conversations/c3/continue", 409)


async def test_continue_with_prefill(make_client: MakeClient, llm_server: LLMTestServer,
                                     tmp_path: Path) -> None:
    write_card(tmp_path, "ann", "Ann")
    client = await make_client(profile={
        **llm_profile(llm_server), "character": "ann",
        "prompt": ["system_prompt", "character_definition", "history",
                   {"post_history_instructions": {"text": "Stay in character."}}],
        "conversation": {"continue_prefill": True}})
    await seed_partial(client, "p1", "Once upon a")
    llm_server.push(Script(tokens=[" time."]))
    await sse(client, "/api/conversations/p1/continue")
    prompt = sent(llm_server)
    # the partial reply goes last, after the post-history instructions, for the provider
    # to extend; no nudge
    assert prompt[-3:] == [("user", "Tell me a story"), ("system", "Stay in character."),
                           ("assistant", "Once upon a")]
    assert (await conversation(client, "p1"))["messages"][-1]["content"] == "Once upon a time."


async def test_concurrent_first_turns_store_the_greeting_once(
        client: TestClient, llm_server: LLMTestServer) -> None:
    """Issue 19.2's reproduction: 20 clients start the same conversation at once."""
    llm_server.default = Script(tokens=["Hi", "!"], first_delay_s=0.05)
    replies = await asyncio.gather(*[
        send(client, "POST", "/api/chat", json={"message": f"m{i}", "conversation_id": "dup"})
        for i in range(20)])
    assert all(r["success"] for r in replies)
    stored = (await conversation(client, "dup"))["messages"]
    assert [m["content"] for m in stored].count("Hello, Zoe.") == 1
    assert stored[0]["content"] == "Hello, Zoe." and len(stored) == 41
    assert sorted(m["content"] for m in stored if m["role"] == "user") == sorted(
        f"m{i}" for i in range(20))
    llm_server.default = Script(tokens=["Ok."])
    await send(client, "POST", "/api/chat", json={"message": "later", "conversation_id": "dup"})
    assert [c for _, c in sent(llm_server)].count("Hello, Zoe.") == 1
