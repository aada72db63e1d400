"""OpenTelemetry: one span per turn, children for the prompt (and each stage), the LLM
and each sentence's synthesis, built from the turn's recorded timings."""

from __future__ import annotations

import pytest

from companion_engine.keys import ENGINE
from companion_engine.testing import LLMTestServer, Script
from tests.conftest import MakeClient

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)


async def test_a_turn_is_one_trace_with_prompt_llm_and_synthesis_spans(
        make_client: MakeClient, llm_server: LLMTestServer) -> None:
    from companion_engine.observers.tracing import set_exporter

    client = await make_client(
        profile={"llm": {"model": "openai/test", "api_base": llm_server.openai_base},
                 "speech": {"enabled": True, "tts": "espeak"}},
        config={"tracing": {"enabled": True, "exporter": "console"}})
    exporter = InMemorySpanExporter()
    tracer = set_exporter(client.app[ENGINE], exporter)  # type: ignore[index]
    llm_server.push(Script(tokens=["Hello there, friend.", " How are you today?"]))
    resp = await client.post("/api/chat/stream", json={"message": "hi", "conversation_id": "t"})
    assert "event: done" in await resp.text()
    tracer.provider.force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    turn = spans["turn"]
    assert turn.parent is None
    assert turn.attributes["companion.status"] == "complete"
    assert turn.attributes["companion.conversation_id"] == "t"
    assert turn.attributes["gen_ai.usage.completion_tokens"] > 0
    trace_id = turn.context.trace_id
    assert all(s.context.trace_id == trace_id for s in spans.values())
    for name in ("prompt", "llm", "synthesis #0", "synthesis #1"):
        assert spans[name].parent.span_id == turn.context.span_id, name
    assert spans["prompt.lorebook"].parent.span_id == spans["prompt"].context.span_id
    assert spans["synthesis #0"].attributes["companion.backend"] == "espeak"
    assert turn.start_time <= spans["prompt"].start_time <= spans["prompt"].end_time \
        <= spans["llm"].start_time <= spans["llm"].end_time <= turn.end_time


async def test_tracing_is_off_by_default(make_client: MakeClient) -> None:
    client = await make_client()
    assert client.app[ENGINE].stash.get("companion_engine.observers.tracing") is None  # type: ignore[index]


@pytest.mark.parametrize("settings", [{"exporter": "zipkin"}, {"enabled": "sometimes"},
                                      {"service_name": ""}, {"endpoint": 5}, {"sampler": 1}])
def test_bad_tracing_settings_are_config_errors(tmp_path, settings) -> None:  # type: ignore[no-untyped-def]
    from companion_engine.configload import load_config
    from companion_engine.errors import ConfigError
    from companion_engine.testing import write_project

    with pytest.raises(ConfigError, match="tracing"):
        load_config(write_project(tmp_path, None, {"tracing": settings}), env={})
