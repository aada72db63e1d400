"""``GET /metrics`` and the observer hooks it is built on (``turn_started``,
``reload_failed``, ``rate_limited``), against the real app and the scripted LLM."""

from __future__ import annotations

import re
import sys

from companion_engine.keys import ENGINE
from companion_engine.testing import LLMTestServer, Script
from tests.conftest import MakeClient, MakeConfig

OBSERVER = """
from companion_engine import hookimpl

EVENTS = []

@hookimpl
def turn_started(engine, turn):
    EVENTS.append(("started", turn.user_message, turn.result is None))

@hookimpl
def turn_completed(engine, turn):
    EVENTS.append(("completed", turn.user_message, turn.result.status))

@hookimpl
async def reload_failed(engine, error):
    EVENTS.append(("reload_failed", error.splitlines()[0]))

@hookimpl
def rate_limited(engine, request, reason):
    EVENTS.append(("rate_limited", request.path, reason))
"""


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(want)}\}})? (\S+)$" if want else \
        rf"^{re.escape(name)} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def events(name: str = "observer") -> list[tuple]:  # type: ignore[type-arg]
    return sys.modules[f"companion_local_plugins.{name}"].EVENTS


async def test_a_spoken_turn_shows_in_metrics(make_client: MakeClient,
                                              llm_server: LLMTestServer) -> None:
    client = await make_client(profile={
        "llm": {"model": "openai/test", "api_base": llm_server.openai_base},
        "speech": {"enabled": True, "tts": "espeak"}})
    llm_server.push(Script(tokens=["Hello there, friend.", " How are you today?"]))
    resp = await client.post("/api/chat/stream", json={"message": "hi"})
    assert resp.status == 200
    assert "event: done" in await resp.text()
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    assert sample(text, "companion_turns_total", status="complete") == 1
    assert sample(text, "companion_ttft_seconds_count") == 1
    assert sample(text, "companion_ttfa_seconds_count") == 1
    assert sample(text, "companion_turn_seconds_count") == 1
    assert sample(text, "companion_llm_seconds_count") == 1
    assert (sample(text, "companion_tokens_total", kind="completion") or 0) > 0
    assert (sample(text, "companion_synthesis_seconds_count", backend="espeak") or 0) >= 2
    assert sample(text, "companion_prompt_stage_seconds_count", stage="lorebook") == 1
    assert sample(text, "companion_lorebook_scan_seconds_count") == 1
    assert sample(text, "companion_active_turns") == 0


async def test_hook_turn_started(make_client: MakeClient, make_config: MakeConfig,
                                 llm_server: LLMTestServer) -> None:
    config = make_config(profile={"llm": {"model": "openai/test",
                                          "api_base": llm_server.openai_base}},
                         plugin_files={"observer.py": OBSERVER})
    client = await make_client(config)
    llm_server.push(Script(tokens=["Hi."]))
    assert (await client.post("/api/chat", json={"message": "one"})).status == 200
    llm_server.push(Script(status=500))
    assert (await client.post("/api/chat", json={"message": "two"})).status == 502
    assert events()[-4:] == [("started", "one", True), ("completed", "one", "complete"),
                             ("started", "two", True), ("completed", "two", "error")]
    text = await (await client.get("/metrics")).text()
    assert sample(text, "companion_turns_total", status="error") == 1
    assert sample(text, "companion_turn_errors_total", type="provider_error") == 1
    assert sample(text, "companion_active_turns") == 0


async def test_hook_reload_failed(make_client: MakeClient, make_config: MakeConfig) -> None:
    config = make_config(plugin_files={"observer.py": OBSERVER})
    client = await make_client(config)
    assert (await client.post("/-/reload")).status == 200
    profile = config.path("profiles") / "default.yaml"
    profile.write_text("llm: {model: [not, a, string]\n")
    assert (await client.post("/-/reload")).status == 422
    assert [e[0] for e in events()] == ["reload_failed"]
    text = await (await client.get("/metrics")).text()
    assert sample(text, "companion_reloads_total", result="ok") == 1
    assert sample(text, "companion_reloads_total", result="failed") == 1


async def test_hook_rate_limited(make_client: MakeClient, make_config: MakeConfig) -> None:
    config = make_config(config={"rate_limit": {"requests": 1, "window_s": 60}},
                         plugin_files={"observer.py": OBSERVER})
    client = await make_client(config)
    body = {"text": "hello"}
    first = await client.post("/api/tts", json=body)
    second = await client.post("/api/tts", json=body)
    assert first.status != 429 and second.status == 429
    assert events() == [("rate_limited", "/api/tts", "rate")]
    text = await (await client.get("/metrics")).text()
    assert sample(text, "companion_rate_limited_total", reason="rate") == 1


async def test_metrics_are_protected_like_the_introspection_routes(
        make_client: MakeClient) -> None:
    client = await make_client(config={"server": {"api_key": "sekret"}})
    assert (await client.get("/metrics")).status == 401
    resp = await client.get("/metrics", headers={"Authorization": "Bearer sekret"})
    assert resp.status == 200 and "# TYPE companion_turns_total counter" in await resp.text()
    assert (await client.post("/metrics", headers={"Authorization": "Bearer sekret"})
            ).status == 405


async def test_metrics_can_be_turned_off(make_client: MakeClient) -> None:
    client = await make_client(config={"metrics": {"enabled": False}})
    resp = await client.get("/metrics")
    assert resp.status == 404
    assert "metrics.enabled" in (await resp.json())["error"]
    assert client.app[ENGINE].stash.get("companion_engine.observers.metrics") is None  # type: ignore[index]
