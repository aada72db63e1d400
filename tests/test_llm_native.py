"""The native LLM client: which models take it, what it sends, how it parses, and garbage.

The chat tests (``test_chat_*.py``) run every chat behaviour through both clients
(the ``llm_path`` fixture); this file covers what is specific to the native one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from companion_engine.config import LLMConfig
from companion_engine.llm import resolve_model
from companion_engine.llm_native import (
    MAX_LINE_BYTES,
    NDJSONParser,
    SSEDataParser,
    chat_url,
    native_protocol,
    request_body,
)
from companion_engine.testing import LLMTestServer, Script, free_port
from tests.chat_helpers import chat_events, llm_profile, names, streamed_text
from tests.conftest import MakeClient

HELLO = {"messages": [{"role": "user", "content": "Hello!"}]}


# --- which models take the native path --------------------------------------------------------


@pytest.mark.parametrize(("model", "api_base", "expected"), [
    ("openai/qwen", "http://127.0.0.1:8080/v1", "openai"),
    ("openai/gpt-4o", None, None),  # OpenAI's cloud: LiteLLM
    ("ollama/llama3.2", None, "ollama"),  # the default local address
    ("ollama_chat/llama3.2", "http://gpu-box:11434", "ollama"),
    ("anthropic/claude-3-5-haiku-20241022", None, None),
    ("lm_studio/x", None, None),
    ("hosted_vllm/x", "http://127.0.0.1:8000/v1", None),
])
def test_native_protocol_is_chosen_per_model(model: str, api_base: str | None,
                                             expected: str | None) -> None:
    llm = LLMConfig(model=model, api_base=api_base)
    assert native_protocol(resolve_model(model, llm)) == expected


@pytest.mark.parametrize(("protocol", "base", "url"), [
    ("openai", "http://h:1/v1", "http://h:1/v1/chat/completions"),
    ("openai", "http://h:1/v1/", "http://h:1/v1/chat/completions"),
    ("openai", "http://h:1/v1/chat/completions", "http://h:1/v1/chat/completions"),
    ("ollama", "http://h:11434", "http://h:11434/api/chat"),
    ("ollama", "http://h:11434/api", "http://h:11434/api/chat"),
    ("ollama", "http://h:11434/api/chat", "http://h:11434/api/chat"),
])
def test_chat_url(protocol: Any, base: str, url: str) -> None:
    assert chat_url(protocol, base) == url


def test_request_body_maps_parameters_as_litellm_does() -> None:
    target = resolve_model("ollama_chat/llama3.2", LLMConfig(model="ollama_chat/llama3.2"))
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    body, headers = request_body("ollama", target, messages, {
        "temperature": 0.5, "max_tokens": 100, "frequency_penalty": 1.1, "top_k": 40,
        "keep_alive": "5m", "response_format": {"type": "json_object"},
        "num_retries": 0, "extra_headers": {"X-Team": "a"}, "seed": None})
    assert body == {"model": "llama3.2", "messages": messages, "stream": True,
                    "keep_alive": "5m", "format": "json",
                    "options": {"temperature": 0.5, "num_predict": 100, "repeat_penalty": 1.1,
                                "top_k": 40}}
    assert headers == {"X-Team": "a"}

    target = resolve_model("openai/m", LLMConfig(model="openai/m", api_base="http://h/v1"))
    body, headers = request_body("openai", target, messages, {
        "temperature": 0.5, "max_tokens": 100, "top_p": 0.9, "max_retries": 0,
        "extra_body": {"min_p": 0.05}})
    assert body == {"model": "m", "messages": messages, "stream": True,
                    "stream_options": {"include_usage": True}, "temperature": 0.5,
                    "max_tokens": 100, "top_p": 0.9, "min_p": 0.05}
    assert headers == {}


# --- the native client against the scripted server --------------------------------------------


@pytest.mark.parametrize("ollama", [False, True], ids=["openai", "ollama"])
async def test_native_is_the_default_and_native_off_uses_litellm(
    make_client: MakeClient, llm_server: LLMTestServer, ollama: bool,
) -> None:
    bodies = {}
    for native in ("auto", "off"):
        profile = llm_profile(llm_server, ollama=ollama, native=native, temperature=0.3,
                              max_tokens=77)
        client = await make_client(profile=profile)
        llm_server.push(Script(tokens=["Hi", " there", "."]))
        events = await chat_events(client, HELLO)
        assert names(events)[-1] == "done"
        done = events[-1][1]
        assert done["full_content"] == "Hi there."
        assert done["usage"]["completion_tokens"] == 3 and "estimated" not in done["usage"]
        assert done["finish_reason"] == "stop"
        rec = llm_server.requests[-1]
        agent = rec.headers.get("user-agent", "")
        assert agent.startswith("companion-engine/") == (native == "auto"), agent
        bodies[native] = rec.body
        await client.close()
    # both clients ask the same thing
    auto, off = bodies["auto"], bodies["off"]
    for key in ("model", "stream"):
        assert auto[key] == off[key], key
    assert auto["messages"] == [{"role": m["role"], "content": m["content"]}
                                for m in off["messages"]]  # (LiteLLM adds Ollama "images": [])
    if ollama:
        assert auto["options"]["temperature"] == off["options"]["temperature"] == 0.3
        assert auto["options"]["num_predict"] == off["options"]["num_predict"] == 77
    else:
        assert auto["temperature"] == off["temperature"] == 0.3
        assert auto["max_tokens"] == off["max_tokens"] == 77
        assert auto["stream_options"] == off["stream_options"] == {"include_usage": True}


# --- parsers ------------------------------------------------------------------------------------


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


payloads = st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
                    max_size=8)


@given(payloads, st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_sse_parser_any_chunking_gives_every_event(docs: list[dict[str, str]], cuts: list[int],
                                                   crlf: bool) -> None:
    nl = b"\r\n" if crlf else b"\n"
    wire = b": a comment" + nl + nl
    for d in docs:
        wire += b"event: x" + nl + b"data: " + json.dumps(d).encode() + nl + nl
    wire += b"data: [DONE]" + nl + nl
    parser = SSEDataParser()
    got = [item for piece in _split(wire, cuts) for item in parser.feed(piece)]
    got += parser.close()
    assert got[-1] == b"[DONE]"
    assert [json.loads(g) for g in got[:-1]] == docs


def test_sse_parser_joins_multiline_data_and_ignores_other_fields() -> None:
    parser = SSEDataParser()
    assert parser.feed(b"id: 1\ndata:a\ndata: b\nretry: 5\n\n") == [b"a\nb"]
    assert parser.feed(b"data: tail") == []
    assert parser.close() == [b"tail"]  # a body that ends without the blank line


@given(payloads, st.lists(st.integers(min_value=0), max_size=12))
def test_ndjson_parser_any_chunking_gives_every_line(docs: list[dict[str, str]],
                                                     cuts: list[int]) -> None:
    wire = b"".join(json.dumps(d).encode() + b"\n" for d in docs) + b"\n"
    parser = NDJSONParser()
    got = [item for piece in _split(wire, cuts) for item in parser.feed(piece)]
    got += parser.close()
    assert [json.loads(g) for g in got] == docs


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=6))
def test_parsers_take_any_bytes(data: bytes, cuts: list[int]) -> None:
    for parser in (SSEDataParser(), NDJSONParser()):
        for piece in _split(data, cuts):
            parser.feed(piece)
        parser.close()


def test_parsers_refuse_an_endless_line() -> None:
    for parser in (SSEDataParser(), NDJSONParser()):
        with pytest.raises(ValueError, match="a line of more than"):
            for _ in range(MAX_LINE_BYTES // 65536 + 2):
                parser.feed(b"x" * 65536)


# --- a hostile or broken provider -------------------------------------------------------------


class RawServer:
    """Answers every chat request with fixed raw bytes (status, content type, body)."""

    def __init__(self) -> None:
        self.reply: tuple[int, str, bytes] = (200, "text/event-stream", b"")
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        status, ctype, body = self.reply
        resp = web.StreamResponse(status=status, headers={"Content-Type": ctype})
        await resp.prepare(request)
        for i in range(0, len(body), 7):  # in small pieces: every split point is tried
            await resp.write(body[i:i + 7])
        await resp.write_eof()
        return resp

    async def __aenter__(self) -> RawServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_post("/api/chat", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


#: (protocol it is written in, status, content type, body); "*" is garbage in both.
GARBAGE = [
    ("*", 200, "text/event-stream", b"<html><body>Bad gateway</body></html>"),
    ("openai", 200, "text/event-stream",
     b'data: {"choices": "nope"}\n\ndata: [1, 2]\n\ndata: null\n\n'),
    ("openai", 200, "text/event-stream", b'data: {"choices": [{"delta": {"content": 5}}]}\n\n'),
    ("openai", 200, "text/event-stream", b'data: {"error": {"message": "overloaded"}}\n\n'),
    ("ollama", 200, "application/x-ndjson", b'{"message": null}\n[]\n"x"\n{"done": true}\n'),
    ("ollama", 200, "application/x-ndjson", b'{"error": "model not found"}\n'),
    ("*", 200, "text/event-stream", b"\xff\xfe\x00garbage\n\n\n"),
    ("*", 502, "text/html", b"<h1>502</h1>"),
    ("*", 429, "application/json", b'{"error": {"message": "slow down", "type": "rate"}}'),
]


@pytest.mark.parametrize("reply", GARBAGE, ids=[str(i) for i in range(len(GARBAGE))])
async def test_garbage_from_the_provider_ends_the_turn_cleanly(
    make_client: MakeClient, reply: tuple[str, int, str, bytes],
) -> None:
    """Whatever comes back, the turn ends with done or provider_error, never a crash; an
    error the provider states (an HTTP status, an error object) is a provider_error."""
    written_in, status, ctype, body = reply
    async with RawServer() as raw:
        raw.reply = (status, ctype, body)
        for protocol, model, base in (("openai", "openai/m", f"http://127.0.0.1:{raw.port}/v1"),
                                      ("ollama", "ollama_chat/m", f"http://127.0.0.1:{raw.port}")):
            client = await make_client(profile={"llm": {"model": model, "api_base": base,
                                                        "timeout_s": 5}})
            events = await chat_events(client, HELLO)
            assert names(events)[-1] in ("done", "error"), events
            if names(events)[-1] == "error":
                assert events[-1][1]["type"] == "provider_error", events
            if status != 200 or (written_in == protocol and b"error" in body):
                assert events[-1][1]["type"] == "provider_error", events
            if status == 429:
                assert "slow down" in events[-1][1]["error"]
            assert streamed_text(events) == ""
            await client.close()


async def test_the_connection_is_reused_between_turns(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    client = await make_client(profile=llm_profile(llm_server))
    for _ in range(3):
        llm_server.push(Script(tokens=["ok"]))
        assert names(await chat_events(client, HELLO))[-1] == "done"
    # one pooled connection to the scripted server, not one per turn
    assert len({r.peer for r in llm_server.requests}) == 1
