"""The ``memory`` stage: full-text recall (SQLite FTS5) and the running summary, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from companion_engine.keys import ENGINE
from companion_engine.memory import open_index, query_terms
from companion_engine.memory.summary import Summarizer
from companion_engine.store import StoredMessage, open_store
from companion_engine.testing import LLMTestServer, Script
from tests.cards_helpers import v2
from tests.chat_helpers import chat_events, llm_profile
from tests.conftest import MakeClient, MakeConfig
from tests.store_helpers import redis_url  # noqa: F401  (fixture)

PROMPT = ["system_prompt", "first_message", "character_definition",
          {"history": {"max_tokens": 3000}}]


def write_card(root: Path, card_id: str, name: str, **fields: Any) -> None:
    (root / "characters").mkdir(parents=True, exist_ok=True)
    (root / "characters" / f"{card_id}.json").write_text(
        json.dumps(v2(name, **fields)), encoding="utf-8")


def memory_profile(server: LLMTestServer, memory: dict[str, Any] | None = None,
                   history_tokens: int = 3000) -> dict[str, Any]:
    prompt = [*PROMPT[:-1], {"history": {"max_tokens": history_tokens}},
              {"memory": memory or {}}]
    return {**llm_profile(server), "character": "nova", "prompt": prompt}


async def preview(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    async with client.post("/api/prompt/preview", json=body) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def chat(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    async with client.post("/api/chat", json=body) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


def summarizer_of(client: TestClient) -> Summarizer:
    found = client.app[ENGINE].stash.get("memory.summarizer")
    assert isinstance(found, Summarizer)
    return found


# --- the index ---------------------------------------------------------------------------------


def test_query_terms_drop_stop_words_and_repeats() -> None:
    assert query_terms("Where does my sister Clara live? Clara!") == ["sister", "clara", "live"]
    assert query_terms("I... a? ok") == []
    assert query_terms("café Straße 東京") == ["café", "straße", "東京"]


async def test_index_follows_every_write_to_the_store(tmp_path: Path) -> None:
    store = await open_store("sqlite:///data/m.db", tmp_path)
    try:
        await store.append_messages("c1", [StoredMessage("user", "The lighthouse keeper"),
                                           StoredMessage("assistant", "He sings at dawn")],
                                    character_id="nova")
        index = open_index(store)
        assert index is not None
        assert await index.ensure() is True  # created now, filled from what was stored
        assert await index.ensure() is False

        async def found(*words: str, scope: str = "character") -> list[str]:
            hits = await index.search(list(words), scope=scope,  # type: ignore[arg-type]
                                      character_id="nova", conversation_id="c1", limit=10)
            return sorted(h.content for h in hits)

        assert await found("lighthouse") == ["The lighthouse keeper"]
        assert await found("singing") == ["He sings at dawn"]  # stemmed
        await store.append_messages("c2", [StoredMessage("user", "Another lighthouse")],
                                    character_id="nova")
        await store.append_messages("c3", [StoredMessage("user", "lighthouse elsewhere")],
                                    character_id="other")
        assert await found("lighthouse") == ["Another lighthouse", "The lighthouse keeper"]
        assert await found("lighthouse", scope="conversation") == ["The lighthouse keeper"]
        await store.edit_message("c1", 0, "The harbour master", expected_version=None)
        assert await found("lighthouse") == ["Another lighthouse"]
        assert await found("harbour") == ["The harbour master"]
        branch = await store.branch("c1", 1, new_id="c1b")
        assert await found("dawn") == ["He sings at dawn", "He sings at dawn"]
        await store.delete_messages("c1", 1, expected_version=None)
        assert await found("dawn") == ["He sings at dawn"]
        await store.delete_conversation(branch.id)
        await store.delete_conversation("c2")
        assert await found("dawn", "lighthouse") == []
    finally:
        await store.close()


async def test_search_text_is_never_query_syntax(tmp_path: Path) -> None:
    store = await open_store("sqlite:///data/m.db", tmp_path)
    try:
        index = open_index(store)
        assert index is not None
        await index.ensure()
        await store.append_messages("c1", [StoredMessage("user", 'quote " NEAR( AND * col:x')],
                                    character_id="nova")
        for text in ['"', "NEAR(a b)", "a AND OR NOT", "col:x*", "^start", "'; DROP TABLE x"]:
            await index.search(query_terms(text) or ["x"], scope="character",
                               character_id="nova", conversation_id=None, limit=3)
    finally:
        await store.close()


# --- recall, through the app --------------------------------------------------------------------


async def test_recall_brings_back_what_another_conversation_said(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    write_card(tmp_path, "nova", "Nova", first_mes="")
    write_card(tmp_path, "vega", "Vega", first_mes="")
    client = await make_client(profile=memory_profile(llm_server, {"summary": False}),
                               root=tmp_path)
    await chat(client, {"message": "My sister Clara lives in Lisbon and loves sailing.",
                        "conversation_id": "old"})
    await chat(client, {"message": "Clara met a sailor.", "conversation_id": "vega-chat",
                        "character_id": "vega"})

    data = await preview(client, {"message": "Where does Clara live these days?",
                                  "conversation_id": "new"})
    memory = data["memory"]
    assert "clara" in memory["query"]
    assert [r["content"] for r in memory["recalled"]] == [
        "My sister Clara lives in Lisbon and loves sailing."]  # not Vega's conversation
    assert memory["recalled"][0]["conversation_id"] == "old"
    assert memory["recalled"][0]["source"] == "fts"
    # placed right after the main prompt, in its template
    assert data["messages"][1]["role"] == "system"
    assert data["messages"][1]["content"] == (
        "[Nova remembers from earlier conversations:\n"
        "User: My sister Clara lives in Lisbon and loves sailing.]")
    assert 0 < memory["recall_tokens"] <= memory["recall_budget"] == 300

    # In the conversation that holds it, the message is in the history: not recalled again.
    same = await preview(client, {"message": "Tell me about Clara", "conversation_id": "old"})
    assert same["memory"]["recalled"] == []
    assert same["memory"]["skipped_in_prompt"] >= 1
    assert sum("Lisbon" in m["content"] for m in same["messages"]) == 1

    # The LLM gets the same prompt the preview shows.
    await chat(client, {"message": "Where does Clara live these days?",
                        "conversation_id": "new"})
    sent = llm_server.requests[-1].body["messages"]
    assert sent[1]["content"] == data["messages"][1]["content"]


async def test_recall_within_budget_and_scope(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    write_card(tmp_path, "nova", "Nova", first_mes="")
    memory = {"summary": False,
              "recall": {"scope": "conversation", "max_tokens": 60, "limit": 2,
                         "position": "at_depth", "depth": 1, "role": "user"}}
    client = await make_client(
        profile=memory_profile(llm_server, memory, history_tokens=40), root=tmp_path)
    for i in range(6):
        await chat(client, {"message": f"Fact {i}: the comet Halley returns in {2061 + i}.",
                            "conversation_id": "c"})
    await chat(client, {"message": "Halley elsewhere", "conversation_id": "other"})
    data = await preview(client, {"message": "When does Halley return?",
                                  "conversation_id": "c"})
    m = data["memory"]
    assert 1 <= len(m["recalled"]) <= 2 and m["recall_tokens"] <= 60
    assert all(r["conversation_id"] == "c" for r in m["recalled"])
    # at depth 1: just before the user's message, as a user message
    assert data["messages"][-2]["role"] == "user"
    assert data["messages"][-2]["content"].startswith("[Nova remembers")
    assert data["messages"][-1]["content"] == "When does Halley return?"


async def test_memory_on_redis_says_recall_is_off(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
    redis_url: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    from loguru import logger

    write_card(tmp_path, "nova", "Nova", first_mes="")
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        client = await make_client(profile=memory_profile(llm_server),
                                   config={"store": {"url": redis_url + "?prefix=mem:"}},
                                   root=tmp_path)
    finally:
        logger.remove(sink)
    assert any("RedisStore has no message index: recall is off" in m for m in messages)
    data = await preview(client, {"message": "Anything about dragons?"})
    assert data["memory"]["recalled"] == []
    assert any("no message index" in n for n in data["memory"]["notes"])


# --- the running summary ------------------------------------------------------------------------


async def test_summary_is_written_after_the_turn_and_placed_next_time(
    make_client: MakeClient, make_config: MakeConfig, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    write_card(tmp_path, "nova", "Nova", first_mes="")
    profile = memory_profile(llm_server, {"recall": False,
                                          "summary": {"batch": 1, "delay_s": 0}},
                             history_tokens=45)
    client = await make_client(profile=profile, root=tmp_path)
    says = ["I adopted a grey cat named Pixel today.", "Pixel knocked over my coffee.",
            "I am moving to Oslo next spring.", "Do you remember my cat?"]
    llm_server.push(Script(tokens=["Lovely", " news."]))
    await chat(client, {"message": says[0], "conversation_id": "c"})
    assert "memory.summarizer" not in client.app[ENGINE].stash  # nothing fell out yet
    llm_server.push(Script(tokens=["Oh", " no!"]))
    await chat(client, {"message": says[1], "conversation_id": "c"})
    llm_server.push(Script(tokens=["Exciting!"]))
    llm_server.push(Script(tokens=["User adopted a grey cat, Pixel."]))  # the summary call
    await chat(client, {"message": says[2], "conversation_id": "c"})
    await summarizer_of(client).idle()

    summary_request = llm_server.requests[-1].body
    asked = summary_request["messages"][0]["content"]
    assert "grey cat named Pixel" in asked and "Summary so far:\n(nothing yet)" in asked
    assert summary_request["stream"] is True

    async with client.get("/api/conversations/c") as resp:
        stored = (await resp.json())["data"]["summary"]
    assert stored["text"] == "User adopted a grey cat, Pixel."
    assert stored["covers"] >= 1

    data = await preview(client, {"message": says[3], "conversation_id": "c"})
    assert data["memory"]["summary"] == "User adopted a grey cat, Pixel."
    assert data["messages"][1]["content"] == (
        "[Summary of the conversation so far: User adopted a grey cat, Pixel.]")
    assert data["memory"]["summary_covers"] == stored["covers"]

    # It survives a restart: a new server over the same data folder places it too.
    again = await make_client(make_config(profile=profile, root=tmp_path))
    data = await preview(again, {"message": says[3], "conversation_id": "c"})
    assert data["memory"]["summary"] == "User adopted a grey cat, Pixel."


async def test_summary_never_delays_done(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    write_card(tmp_path, "nova", "Nova", first_mes="")
    client = await make_client(profile=memory_profile(
        llm_server, {"recall": False, "summary": {"batch": 1, "delay_s": 0}}, history_tokens=30),
        root=tmp_path)
    for text in ("First long message about the harbour.", "Second long message about boats."):
        await chat(client, {"message": text, "conversation_id": "c"})
        if "memory.summarizer" in client.app[ENGINE].stash:
            await summarizer_of(client).idle()
    llm_server.push(Script(tokens=["Reply", "."]),
                    Script(tokens=["Slow", " summary."], first_delay_s=1.5))
    events = await chat_events(client, {"message": "Third message about sails.",
                                        "conversation_id": "c"})
    assert events[-1][0] == "done"
    # The whole stream, done included, arrived while the summary was still being written.
    assert summarizer_of(client).busy
    chat_request = llm_server.requests[-1]
    await summarizer_of(client).idle()
    summary = llm_server.requests[-1]
    assert summary is not chat_request and summary.completed
    assert summary.started_at > chat_request.started_at
    assert summary.body["messages"][0]["content"].startswith("You keep the memory")


async def test_stale_summary_is_not_placed(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    write_card(tmp_path, "nova", "Nova", first_mes="")
    client = await make_client(profile=memory_profile(
        llm_server, {"recall": False, "summary": {"delay_s": 0}}, history_tokens=30), root=tmp_path)
    for i in range(3):
        await chat(client, {"message": f"Message number {i} is long enough.",
                            "conversation_id": "c"})
    engine = client.app[ENGINE]
    await summarizer_of(client).idle()  # else the real summary may land after ours
    await engine.store.update_state("c", {"summary": {
        "text": "Made up.", "covers": 2, "last": "not-the-fingerprint", "updated_at": 0}})
    data = await preview(client, {"message": "And now?", "conversation_id": "c"})
    assert data["memory"]["summary"] is None
    assert any("no longer matches" in n for n in data["memory"]["notes"])


def test_memory_options_are_validated() -> None:
    from companion_engine.config import Profile
    from companion_engine.errors import ConfigError
    from companion_engine.pipeline import build_pipeline
    from tests.speech_helpers import plugin_host

    for bad in ({"recall": {"scope": "everything"}}, {"summary": {"batch": 0}},
                {"recall": {"position": "nowhere"}}, {"unknown": 1}, {"summary": "yes"}):
        profile = Profile.model_validate({"prompt": [{"memory": bad}]})
        with pytest.raises(ConfigError, match=r"prompt\[0\]\.memory"):
            build_pipeline(profile, plugin_host())
    ok = Profile.model_validate({"prompt": [{"memory": {"summary": False, "recall": True}}]})
    stage = build_pipeline(ok, plugin_host()).prompt[0]
    assert stage.options.summary.enabled is False  # type: ignore[attr-defined]


# --- semantic recall: embeddings through LiteLLM, vectors in sqlite-vec -----------------------


async def _embedded(client: TestClient) -> None:
    for vectors in client.app[ENGINE].stash.get("memory.vectors", ()):
        await vectors.fill()


@pytest.mark.parametrize("mode", ["semantic", "hybrid"])
async def test_semantic_recall_with_embeddings(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path, mode: str,
) -> None:
    pytest.importorskip("sqlite_vec")
    pytest.importorskip("pysqlite3")
    write_card(tmp_path, "nova", "Nova", first_mes="")
    memory = {"summary": False, "recall": {
        "mode": mode, "embedding_model": "openai/test-embedding",
        "embedding_api_base": llm_server.openai_base, "embedding_api_key": "sk-test"}}
    client = await make_client(profile=memory_profile(llm_server, memory), root=tmp_path)
    await chat(client, {"message": "My sister Clara lives in Lisbon by the sea.",
                        "conversation_id": "old"})
    await chat(client, {"message": "The weather was grey all week.", "conversation_id": "old"})
    await _embedded(client)
    assert "My sister Clara lives in Lisbon by the sea." in llm_server.embedded
    assert (tmp_path / "data" / "companion.vectors.db").exists()

    data = await preview(client, {"message": "clara lisbon sea", "conversation_id": "new"})
    recalled = data["memory"]["recalled"]
    assert recalled and recalled[0]["content"] == "My sister Clara lives in Lisbon by the sea."
    sources = {r["source"] for r in recalled}
    assert sources == ({"semantic"} if mode == "semantic" else sources & {"semantic", "fts"})
    assert llm_server.embedded[-1].startswith("clara lisbon sea")  # the query, on the turn

    # A deleted conversation is never recalled, even though its vectors remain.
    await client.app[ENGINE].store.delete_conversation("old")
    data = await preview(client, {"message": "clara lisbon sea", "conversation_id": "new"})
    assert data["memory"]["recalled"] == []


def test_semantic_mode_needs_an_embedding_model() -> None:
    from companion_engine.config import Profile
    from companion_engine.errors import ConfigError
    from companion_engine.pipeline import build_pipeline
    from tests.speech_helpers import plugin_host

    profile = Profile.model_validate({"prompt": [{"memory": {"recall": {"mode": "semantic"}}}]})
    with pytest.raises(ConfigError, match="needs embedding_model"):
        build_pipeline(profile, plugin_host())


async def test_summary_waits_for_a_quiet_moment_and_rapid_turns_cost_one(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    write_card(tmp_path, "nova", "Nova", first_mes="")
    client = await make_client(profile=memory_profile(
        llm_server, {"recall": False, "summary": {"batch": 1, "delay_s": 2}},
        history_tokens=30), root=tmp_path)
    for i in range(5):
        await chat(client, {"message": f"Rapid message number {i} about the harbour.",
                            "conversation_id": "c"})
    await summarizer_of(client).idle()
    summaries = [r for r in llm_server.requests
                 if r.body["messages"][0]["content"].startswith("You keep the memory")]
    assert len(summaries) == 1  # the waiting jobs were replaced by the newest one
    async with client.get("/api/conversations/c") as resp:
        assert (await resp.json())["data"]["summary"]["covers"] >= 3


async def test_summary_works_on_the_redis_store_too(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    write_card(tmp_path, "nova", "Nova", first_mes="")
    client = await make_client(
        profile=memory_profile(llm_server, {"recall": False,
                                            "summary": {"batch": 1, "delay_s": 0}},
                               history_tokens=30),
        config={"store": {"url": redis_url + "?prefix=memsum:"}}, root=tmp_path)
    for text in ("The first long message about the old lighthouse.",
                 "The second long message about the harbour master."):
        await chat(client, {"message": text, "conversation_id": "r"})
        if "memory.summarizer" in client.app[ENGINE].stash:
            await summarizer_of(client).idle()
    llm_server.push(Script(tokens=["Reply."]), Script(tokens=["Lighthouse and harbour."]))
    await chat(client, {"message": "A third one about boats.", "conversation_id": "r"})
    await summarizer_of(client).idle()
    async with client.get("/api/conversations/r") as resp:
        summary = (await resp.json())["data"]["summary"]
    assert summary["text"] in ("Lighthouse and harbour.", "Hello there!")
    data = await preview(client, {"message": "And?", "conversation_id": "r"})
    assert data["memory"]["summary"] == summary["text"]
