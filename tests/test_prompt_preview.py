"""``POST /api/prompt/preview`` over real HTTP: the prompt and lore, no LLM call, nothing stored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from companion_engine.config import AppConfig
from companion_engine.keys import ENGINE
from companion_engine.store.base import StoredMessage
from tests.conftest import shared_card
from tests.shipped import shipped_copy

URL = "/api/prompt/preview"


@pytest.fixture
def config(make_config: Any, tmp_path: Path) -> AppConfig:
    lore = tmp_path / "lore"
    lore.mkdir()
    (lore / "world.json").write_text(json.dumps({"entries": {
        "0": {"uid": 0, "key": ["moon"], "content": "The moon of {{user}} is red.",
              "order": 5, "position": 4, "depth": 0, "role": 0},
        "1": {"uid": 1, "key": ["/[broken/"], "content": "odd", "order": 1}}}))
    cfg: AppConfig = make_config(profile={
        "character": "aria", "user_name": "Sam", "output": [],
        "prompt": ["system_prompt", "first_message",
                   {"lorebook": {"files": ["lore/world.json"], "recursive": False}},
                   "character_definition", "example_dialogue",
                   {"history": {"max_tokens": 3000}}, "post_history_instructions"]})
    folder = cfg.path("characters")
    shipped_copy("characters/aria.yaml", folder / "aria.yaml")
    shutil.copy(shared_card("seraphina.v2.chara.json"), folder / "seraphina.json")
    return cfg


@pytest.fixture
async def client(make_client: Any, config: AppConfig) -> TestClient:
    return await make_client(config)


async def preview(client: TestClient, body: Any, status: int = 200) -> dict[str, Any]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    resp = await client.post(URL, data=data, headers={"Content-Type": "application/json"})
    out = await resp.json()
    assert resp.status == status, out
    assert out["success"] is (status == 200)
    return out  # type: ignore[no-any-return]


async def test_preview_with_client_history_and_lore(client: TestClient) -> None:
    out = await preview(client, {"character_id": "seraphina", "user_name": "Kai", "messages": [
        {"role": "assistant", "content": "You are safe here."},
        {"role": "user", "content": "What is in the forest? And the moon?"}]})
    roles = [(m["role"], m["content"][:30]) for m in out["messages"]]
    assert roles[0] == ("system", "Write Seraphina's next reply i")
    assert roles[1] == ("system", 'Kai: "What is Eldoria?"\nSeraph')   # lore before the card
    assert roles[-3:] == [("assistant", "You are safe here."),
                          ("user", "What is in the forest? And the"),
                          ("system", "The moon of Kai is red.")]     # depth 0, after the chat
    assert [(x["id"], x["source"], x["position"], x["matched"]) for x in out["lore"]] == [
        (0, "Seraphina", "before_char", "forest"), (0, "world", "at_depth", "moon")]
    assert out["greeting"] is None  # the conversation has history
    assert out["model"] == "openai/test-model" and out["character"] == "seraphina"
    tokens = out["tokens"]
    assert tokens["total"] == sum(m["tokens"] for m in out["messages"]) > 0
    assert tokens["lore_budget"] == 800 and tokens["lore"] == sum(x["tokens"]
                                                                  for x in out["lore"])
    assert any("invalid regex" in w for w in out["warnings"])


async def test_new_conversation_shows_the_greeting_and_stores_nothing(
        client: TestClient) -> None:
    out = await preview(client, {"message": "Hello!", "conversation_id": "c-new"})
    assert out["character"] == "aria" and out["conversation_id"] == "c-new"
    assert out["greeting"].startswith("[joy] Oh, hi Sam!")
    assert [m["role"] for m in out["messages"][-3:]] == ["assistant", "user", "system"]
    out = await preview(client, {"message": "Hello!", "greeting": 1})
    assert out["greeting"] == "[calm] Welcome back, Sam. Tea's ready. Want to tell me about " \
                              "your day?"
    assert "tea" in [x["comment"] for x in out["lore"]]  # the greeting is scanned too
    engine = client.app[ENGINE]
    assert await engine.store.get_conversation("c-new") is None


async def test_server_history_is_used(client: TestClient) -> None:
    engine = client.app[ENGINE]
    await engine.store.append_messages("c1", [
        StoredMessage("user", "Tell me about saturn"),
        StoredMessage("assistant", "Rings!"),
        StoredMessage("assistant", "broken reply", status="error")], character_id="aria")
    out = await preview(client, {"message": "And more?", "conversation_id": "c1"})
    contents = [m["content"] for m in out["messages"]]
    assert contents[-4:-1] == ["Tell me about saturn", "Rings!", "And more?"]
    assert "broken reply" not in contents and out["greeting"] is None
    assert [x["comment"] for x in out["lore"]] == ["saturn"]


async def test_preview_lists_the_lore_the_budget_dropped(make_client: Any, make_config: Any,
                                                          tmp_path: Path) -> None:
    """Issue 19.13: when ``lore_overflowed`` is true the preview says which entries went."""
    (tmp_path / "book.json").write_text(json.dumps({"entries": {
        "0": {"uid": "small", "key": ["storm"], "content": "Storms come from the west.",
              "order": 50, "comment": "weather"},
        "1": {"uid": "big", "key": ["storm"], "content": "The storm god " * 60,
              "order": 20, "comment": "the storm god"},
        "2": {"uid": "tiny", "key": ["storm"], "content": "Wet.", "order": 10,
              "comment": "rain"},
        "3": {"uid": "calm", "key": ["calm"], "content": "Calm.", "order": 5}}}))
    cfg = make_config(profile={"output": [], "prompt": [
        "system_prompt", {"lorebook": {"files": ["book.json"], "token_budget": 40,
                                       "recursive": False}},
        "character_definition", "history"]})
    cfg.base_dir = tmp_path
    client = await make_client(cfg)
    out = await preview(client, {"message": "A storm is coming."})
    assert [x["id"] for x in out["lore"]] == ["small"]
    assert out["tokens"]["lore_overflowed"] is True
    dropped = out["lore_dropped"]
    assert [(d["id"], d["comment"], d["source"], d["reason"]) for d in dropped] == [
        ("big", "the storm god", "book", "over_budget"),
        ("tiny", "rain", "book", "scan_stopped")]
    assert dropped[0]["tokens"] > 40 and dropped[1]["tokens"] is None
    assert out["tokens"]["lore"] + dropped[0]["tokens"] >= out["tokens"]["lore_budget"]
    # Within budget: nothing dropped, not overflowed.
    calm = await preview(client, {"message": "All calm."})
    assert calm["lore_dropped"] == [] and calm["tokens"]["lore_overflowed"] is False


@pytest.mark.parametrize(("body", "status", "text"), [
    (b"{not json", 400, "malformed JSON"),
    (b"", 400, "empty"),
    ({}, 422, "send `messages`"),
    ({"message": "hi", "greeting": "one"}, 422, "greeting"),
    ({"message": "hi", "greeting": 9}, 409, "greeting 9 does not exist"),
    ({"message": "hi", "character_id": "nobody"}, 404, "character not found"),
    ({"message": "hi", "character_id": "../etc"}, 422, "character_id"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     422, "last of `messages`"),
])
async def test_bad_requests_are_4xx(client: TestClient, body: Any, status: int,
                                    text: str) -> None:
    out = await preview(client, body, status)
    assert text in out["error"] or text in json.dumps(out["detail"])


async def test_preview_is_in_the_openapi_document(client: TestClient) -> None:
    spec = await (await client.get("/openapi.json")).json()
    op = spec["paths"][URL]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatRequest")
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "PromptPreview")
    schemas = spec["components"]["schemas"]
    dropped = schemas["PromptPreview"]["properties"]["lore_dropped"]
    assert dropped["items"]["$ref"].endswith("PreviewDroppedLore") and dropped["description"]
    assert set(schemas["PreviewDroppedLore"]["properties"]) == {
        "id", "comment", "position", "order", "source", "tokens", "reason"}
