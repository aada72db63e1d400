"""Model listing, provider status and switching, against the scripted test server."""

from __future__ import annotations

import pytest

from companion_engine.config import LLMConfig
from companion_engine.keys import ENGINE
from companion_engine.llm import ModelError, resolve_model, split_model, validate_model
from companion_engine.testing import LLMTestServer, Script
from tests.chat_helpers import chat_events, llm_profile
from tests.conftest import MakeClient


@pytest.mark.parametrize("ollama", [False, True], ids=["openai", "ollama"])
async def test_models_listed_from_the_provider(
    make_client: MakeClient, llm_server: LLMTestServer, ollama: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for env in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OLLAMA_API_BASE", "LM_STUDIO_API_BASE"):
        monkeypatch.delenv(env, raising=False)
    client = await make_client(profile=llm_profile(llm_server, ollama=ollama))
    async with client.get("/api/models") as resp:
        body = await resp.json()
    assert resp.status == 200 and body["success"] is True
    if ollama:
        assert [m["name"] for m in body["data"]] == [
            "ollama_chat/test-model:latest", "ollama_chat/other-model:latest"]
        assert body["data"][0]["size"] == 1000 and body["data"][0]["type"] == "local"
    else:
        assert [m["name"] for m in body["data"]] == ["openai/test-model", "openai/other-model"]
    assert body["count"] == 2
    assert body["active_model"] == ("ollama_chat/test-model" if ollama else "openai/test-model")

    async with client.get("/api/models/status") as resp:
        status = await resp.json()
    assert status["status"] == "online"
    assert status["active_provider"]["connected"] is True
    assert status["active_provider"]["type"] == "local"
    (provider,) = status["providers"]
    assert provider["connected"] is True and len(provider["models"]) == 2
    assert status["configuration"]["timeout_ms"] == 5000


async def test_unreachable_and_sick_providers(make_client: MakeClient,
                                              llm_server: LLMTestServer) -> None:
    client = await make_client(profile={"llm": {"model": "ollama_chat/x",
                                                "api_base": "http://127.0.0.1:9"}})
    async with client.get("/api/models") as resp:
        assert (await resp.json())["data"] == []
    async with client.get("/api/models/status") as resp:
        status = await resp.json()
    assert status["active_provider"]["connected"] is False
    assert "127.0.0.1:9" in status["providers"][0]["error"]

    llm_server.listing_status = 500
    client = await make_client(profile=llm_profile(llm_server))
    async with client.get("/api/models/status") as resp:
        status = await resp.json()
    assert status["providers"][0]["connected"] is False
    assert "HTTP 500" in status["providers"][0]["error"]


async def test_cloud_models_only_when_their_key_is_set(
    make_client: MakeClient, llm_server: LLMTestServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    client = await make_client(profile=llm_profile(llm_server, ollama=True))
    engine = client.app[ENGINE]  # type: ignore[index]
    providers = engine.llm._providers()
    assert [(p[0], p[2]) for p in providers] == [
        ("ollama_chat", llm_server.ollama_base), ("openai", "https://api.openai.com/v1")]


@pytest.mark.parametrize("path", ["/api/models/switch", "/api/chat/switch"])
async def test_switch_by_query_or_body_and_chat_uses_it(
    make_client: MakeClient, llm_server: LLMTestServer, path: str,
) -> None:
    client = await make_client(profile=llm_profile(llm_server))
    async with client.post(path, params={"new_model": "openai/other-model"}) as resp:
        body = await resp.json()
    assert resp.status == 200, body
    assert body["active_model"] == "openai/other-model"
    assert body["previous_model"] == "openai/test-model"
    assert body["connected"] is True
    llm_server.push(Script(tokens=["ok"]))
    events = await chat_events(client, {"message": "hi"})
    assert events[-1][1]["provider"] == "openai/other-model"
    assert llm_server.requests[-1].body["model"] == "other-model"

    async with client.post(path, json={"new_model": "openai/test-model"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["active_model"] == "openai/test-model"
    async with client.get("/api/status") as resp:
        assert (await resp.json())["active_model"] == "openai/test-model"


async def test_switch_rejects_bad_input_and_keeps_the_model(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    client = await make_client(profile=llm_profile(llm_server))
    cases = [
        ({"params": {"new_model": "../../etc"}}, 400, "invalid model name"),
        ({"params": {"new_model": "nosuch/model"}}, 400, "unknown provider"),
        ({"params": {"new_model": "ollama/"}}, 400, "empty"),
        ({"params": {"new_model": "llama3.2"}}, 400, "cannot tell the provider"),
        ({}, 400, "new_model"),
        ({"json": {"model": "x"}}, 422, "new_model"),
        ({"data": b"{oops", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
    ]
    for kwargs, status, text in cases:
        async with client.post("/api/models/switch", **kwargs) as resp:
            body = await resp.json()
            assert resp.status == status, (kwargs, body)
            assert text in body["error"] or text in str(body["detail"]), (kwargs, body)
    assert client.app[ENGINE].active_model == "openai/test-model"  # type: ignore[index]


async def test_model_strings_resolve_to_providers() -> None:
    assert split_model("lmstudio/qwen") == ("lm_studio", "qwen")
    assert split_model("ollama/llama3.2") == ("ollama_chat", "llama3.2")
    assert split_model("gpt-4o") == ("openai", "gpt-4o")
    llm = LLMConfig(model="openai/local", api_base="http://192.168.1.5:8000/v1")
    same = resolve_model("openai/other", llm)
    assert (same.api_base, same.type, same.api_key) == (
        "http://192.168.1.5:8000/v1", "local", "not-needed")
    other = resolve_model("ollama_chat/llama3.2", llm)
    assert other.api_base == "http://localhost:11434" and other.type == "local"
    cloud = resolve_model("anthropic/claude-3-5-haiku-20241022", llm)
    assert (cloud.api_base, cloud.type, cloud.api_key) == (None, "cloud", None)
    assert cloud.address == "https://api.anthropic.com/v1"
    assert await validate_model("gpt-4o-mini") == "openai/gpt-4o-mini"
    assert await validate_model("ollama/llama3.2:8b") == "ollama_chat/llama3.2:8b"
    with pytest.raises(ModelError):
        await validate_model("bogus/x")
