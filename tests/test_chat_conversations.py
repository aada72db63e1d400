"""Server-managed history, ``POST /api/chat`` and ``/api/conversations/{id}``."""

from __future__ import annotations

from pathlib import Path

import pytest

from companion_engine.keys import ENGINE
from companion_engine.testing import LLMTestServer, Script
from tests.chat_helpers import add_card, chat_events, llm_profile, names
from tests.conftest import MakeClient

#: Every test here runs through both LLM clients (native, LiteLLM).
pytestmark = pytest.mark.usefixtures("llm_path")


async def test_conversation_is_stored_and_feeds_the_next_turn(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    card = add_card(tmp_path)
    client = await make_client(profile={**llm_profile(llm_server), "character": card})
    llm_server.push(Script(tokens=["Welcome", " back."]), Script(tokens=["Of", " course."]))
    first = await chat_events(client, {"message": "Hi there"})
    conv_id = first[0][1]["conversation_id"]
    assert conv_id and first[-1][1]["conversation_id"] == conv_id
    second = await chat_events(client, {"message": "Remember me?", "conversation_id": conv_id})
    assert names(second)[-1] == "done"

    sent = [(m["role"], m["content"]) for m in llm_server.requests[-1].body["messages"]]
    assert ("user", "Hi there") in sent and ("assistant", "Welcome back.") in sent
    assert sent[-1] == ("user", "Remember me?")

    async with client.get(f"/api/conversations/{conv_id}") as resp:
        assert resp.status == 200
        data = (await resp.json())["data"]
    assert data["character_id"] == card
    stored = [(m["role"], m["content"], m["status"]) for m in data["messages"]]
    # a new conversation starts with the card's greeting, then the turns in order
    assert stored[0][0] == "assistant" and "Seraphina" in stored[0][1]
    assert stored[1:] == [("user", "Hi there", "complete"),
                          ("assistant", "Welcome back.", "complete"),
                          ("user", "Remember me?", "complete"),
                          ("assistant", "Of course.", "complete")]
    assert data["messages"][-1]["meta"]["usage"]["completion_tokens"] == 2
    # greeting + first message in one transaction, then one per reply and message
    assert data["version"] == 4
    assert [m["index"] for m in data["messages"]] == [0, 1, 2, 3, 4]
    assert len({m["id"] for m in data["messages"]}) == 5
    assert data["messages"][2]["swipes"] == ["Welcome back."]
    assert data["messages"][2]["swipe_index"] == 0 and "swipes" not in data["messages"][1]
    assert data["character_ids"] == [card] and data["summary"] is None

    async with client.delete(f"/api/conversations/{conv_id}") as resp:
        assert resp.status == 200
    async with client.get(f"/api/conversations/{conv_id}") as resp:
        assert resp.status == 404
    async with client.delete(f"/api/conversations/{conv_id}") as resp:
        assert resp.status == 404


async def test_a_failed_turn_is_kept_but_a_retry_sends_the_message_once(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    """Issue 19.9: the provider is offline, the user sends the same message again."""
    client = await make_client(profile=llm_profile(llm_server))
    llm_server.push(Script(status=503, error_message="overloaded"))
    events = await chat_events(client, {"message": "Are you there?", "conversation_id": "k1"})
    assert names(events) == ["error"]
    engine = client.app[ENGINE]  # type: ignore[index]
    conv = await engine.store.get_conversation("k1")
    assert conv is not None
    assert [(m.role, m.content, m.status) for m in conv.messages] == [
        ("user", "Are you there?", "complete"), ("assistant", "", "error")]
    assert conv.messages[1].meta["error"]["type"] == "provider_error"

    llm_server.push(Script(tokens=["Yes."]))
    await chat_events(client, {"message": "Are you there?", "conversation_id": "k1"})
    sent = [(m["role"], m["content"]) for m in llm_server.requests[-1].body["messages"]]
    assert sent.count(("user", "Are you there?")) == 1 and sent[-1] == ("user", "Are you there?")
    assert ("assistant", "") not in sent
    # the API still shows the failed turn, with its status
    async with client.get("/api/conversations/k1") as resp:
        stored = [(m["role"], m["status"]) for m in (await resp.json())["data"]["messages"]]
    assert stored == [("user", "complete"), ("assistant", "error"),
                      ("user", "complete"), ("assistant", "complete")]


async def test_client_managed_history_is_sent_and_not_stored(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    client = await make_client(profile=llm_profile(llm_server))
    body = {"messages": [{"role": "user", "content": "One"},
                         {"role": "assistant", "content": "Two"},
                         {"role": "user", "content": "Three"}],
            "conversation_id": "frontend-1",
            "character_card": {"ignored": True}, "stream": True}
    events = await chat_events(client, body)
    assert events[-1][1]["conversation_id"] == "frontend-1"
    sent = [(m["role"], m["content"]) for m in llm_server.requests[-1].body["messages"]]
    assert sent[-3:] == [("user", "One"), ("assistant", "Two"), ("user", "Three")]
    async with client.get("/api/conversations/frontend-1") as resp:
        assert resp.status == 404


async def test_chat_json_reply_without_stream_flag(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    client = await make_client(profile={**llm_profile(llm_server),
                                        "speech": {"enabled": True, "tts": "none"}})
    llm_server.push(Script(tokens=["<think>x</think>", "It's ", "<b>fine</b>", "."]))
    async with client.post("/api/chat", json={"message": "hi", "conversation_id": "j1"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["success"] is True
    assert body["content"] == "It's <b>fine</b>."
    assert body["provider"] == body["model"] == "openai/test-model"
    assert body["usage"]["total_tokens"] > 0
    assert body["conversation_id"] == "j1"
    async with client.get("/api/conversations/j1") as resp:
        assert [m["content"] for m in (await resp.json())["data"]["messages"]] == [
            "hi", "It's <b>fine</b>."]


async def test_chat_json_maps_provider_failures_to_5xx(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    client = await make_client(profile=llm_profile(llm_server, timeout_s=0.5))
    llm_server.push(Script(status=500), Script(headers_delay_s=3))
    for status, kind in ((502, "provider_error"), (504, "timeout")):
        async with client.post("/api/chat", json={"message": "hi"}) as resp:
            body = await resp.json()
            assert resp.status == status, body
            assert body["success"] is False and body["detail"]["type"] == kind
    offline = await make_client(profile={"llm": {"model": "ollama_chat/x",
                                                 "api_base": "http://127.0.0.1:9"}})
    async with offline.post("/api/chat", json={"message": "hi"}) as resp:
        body = await resp.json()
        assert resp.status == 503
        assert "127.0.0.1:9" in body["error"]


async def test_conversation_ids_are_validated(make_client: MakeClient) -> None:
    client = await make_client()
    for bad in ("..%2F..%2Fetc", "a" * 200, "-lead"):
        async with client.get(f"/api/conversations/{bad}") as resp:
            assert resp.status in (400, 404)
            assert (await resp.json())["success"] is False
    async with client.get("/api/conversations/" + "a" * 200) as resp:
        assert resp.status == 400
