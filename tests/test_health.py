"""``/health`` tells the truth about the LLM (issue 19.7), and stays fast doing so."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from companion_engine.keys import ENGINE
from companion_engine.routes import system
from companion_engine.testing import LLMTestServer


async def health(client: Any) -> dict[str, Any]:
    resp = await client.get("/health")
    assert resp.status == 200  # degraded is still an answer, not an error
    return await resp.json()  # type: ignore[no-any-return]


async def test_unreachable_llm_is_degraded_with_the_reason(make_client: Any) -> None:
    """The reproduction: the provider is down, and /health said ``healthy``."""
    client = await make_client(profile={"llm": {"model": "openai/test-model",
                                                "api_base": "http://127.0.0.1:9/v1"}})
    body = await health(client)
    assert body["status"] == "degraded"
    assert body["llm"]["connected"] is False
    assert "cannot reach http://127.0.0.1:9/v1/models" in body["llm"]["error"]
    [reason] = body["reasons"]
    assert reason["component"] == "llm"
    assert "openai/test-model is unreachable" in reason["reason"]
    assert body["config"]["last_error"] is None  # the config itself is fine


async def test_provider_coming_and_going_is_seen_within_the_cache_time(
        make_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "HEALTH_TTL_S", 0.2)
    server = await LLMTestServer.start()
    port = int(server.openai_base.split(":")[2].split("/")[0])
    client = await make_client(profile={"llm": {"model": "openai/test",
                                                "api_base": server.openai_base}})
    try:
        body = await health(client)
        assert body["status"] == "healthy" and body["reasons"] == []
        assert body["llm"]["connected"] is True and body["llm"]["error"] is None
    finally:
        await server.close()
    await asyncio.sleep(0.3)
    assert (await health(client))["status"] == "degraded"
    server = await LLMTestServer.start(port=port)  # back on the same address
    try:
        await asyncio.sleep(0.3)
        assert (await health(client))["status"] == "healthy"
    finally:
        await server.close()


async def test_health_probes_once_for_many_concurrent_checks(make_client: Any) -> None:
    """Cached 5 s, and concurrent checks share one probe in flight: /health stays cheap
    for a monitor (or a page) that polls it hard."""
    server = await LLMTestServer.start()
    try:
        client = await make_client(profile={"llm": {"model": "openai/test",
                                                    "api_base": server.openai_base}})
        gateway = client.app[ENGINE].llm
        probes: list[str] = []
        real_probe = gateway.probe_model

        async def counted(model: str) -> Any:
            probes.append(model)
            return await real_probe(model)  # the real HTTP probe

        gateway.probe_model = counted
        bodies = await asyncio.gather(*(health(client) for _ in range(20)))
        bodies += [await health(client) for _ in range(5)]
        assert all(b["status"] == "healthy" for b in bodies)
        assert probes == ["openai/test"]
    finally:
        await server.close()


async def test_a_provider_that_cannot_be_probed_is_not_blamed(make_client: Any) -> None:
    client = await make_client(profile={"llm": {"model": "bedrock/anthropic.claude-v2"}})
    body = await health(client)
    assert body["llm"]["connected"] is False and body["llm"]["error"] == system.NOT_PROBED
    assert body["status"] == "healthy" and body["reasons"] == []


async def test_rejected_reload_and_dead_llm_are_both_reasons(make_client: Any,
                                                             make_config: Any) -> None:
    config = make_config(config={"reload": False})
    client = await make_client(config)
    (config.path("profiles") / "default.yaml").write_text("llm: [not, a, mapping\n")
    assert (await client.post("/-/reload")).status == 422
    body = await health(client)
    assert body["status"] == "degraded"
    assert [r["component"] for r in body["reasons"]] == ["llm", "config"]
    assert "default.yaml" in body["reasons"][1]["reason"]
