"""POST /api/chat/stream end to end: real HTTP through LiteLLM to the scripted test server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from companion_engine.chat import sse
from companion_engine.testing import LLMTestServer, Script
from tests.chat_helpers import add_card, chat_events, llm_profile, names, parse_sse, streamed_text
from tests.conftest import MakeClient, MakeConfig

#: Every test here runs through both LLM clients (native, LiteLLM).
pytestmark = pytest.mark.usefixtures("llm_path")

HELLO = {"messages": [{"role": "user", "content": "Hello!"}]}


@pytest.mark.parametrize("ollama", [False, True], ids=["openai", "ollama"])
async def test_stream_events_in_order_with_sentences_usage_and_timings(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path, ollama: bool,
) -> None:
    card = add_card(tmp_path)
    client = await make_client(profile={**llm_profile(llm_server, ollama=ollama),
                                        "character": card})
    tokens = ["It's", " Dr.", " Smith", ".", " Pi", " is", " 3", ".", "14", ",", " right", "?",
              " Yes"]
    llm_server.push(Script(tokens=tokens, delay_s=0.005))
    events = await chat_events(client, HELLO)

    assert names(events)[0] == "provider_connected"
    assert names(events)[-1] == "done"
    assert set(names(events)[1:-1]) == {"content"}
    connected = events[0][1]
    assert connected["provider"] == connected["model"] == (
        "ollama_chat/test-model" if ollama else "openai/test-model")
    assert connected["type"] == "local"
    assert connected["character"] == "Seraphina"
    contents = [d for n, d in events if n == "content"]
    assert [d["chunk_index"] for d in contents] == list(range(len(contents)))
    text = "".join(tokens)
    assert streamed_text(events) == text  # raw text: no HTML escaping of "It's"
    sentences = [d["sentence"] for d in contents if d.get("sentence_complete")]
    assert " ".join(sentences) == text
    assert sentences[0].startswith("It's Dr. Smith.")  # no cut inside "Dr."
    assert any(s.startswith("Pi is 3.14") for s in sentences)  # nor inside 3.14
    # a sentence completed by the final flush is an extra event without new text
    assert contents[-1]["content"] == "" and contents[-1]["sentence"].endswith("Yes")

    done = events[-1][1]
    assert done["full_content"] == text
    assert done["character"] == "Seraphina"
    assert done["usage"]["completion_tokens"] == len(tokens)
    assert "estimated" not in done["usage"]
    assert done["chunk_count"] >= len(tokens)
    t = done["timings"]
    assert 0 < t["ttft_ms"] <= t["first_sentence_ms"] <= t["total_ms"]
    assert t["ttfa_ms"] is None  # speech is off in this profile
    sent = llm_server.requests[-1].body
    assert (sent["messages"][-1]["role"], sent["messages"][-1]["content"]) == ("user", "Hello!")
    assert any("Seraphina" in m["content"] for m in sent["messages"][:-1])


async def test_multiline_and_unicode_text_stays_one_data_line(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    client = await make_client(profile=llm_profile(llm_server))
    tokens = ["Line one.\n\n", "data: fake\nevent: x", " — ünïcödé 日本語 \"q\" </b>"]
    llm_server.push(Script(tokens=tokens))
    async with client.post("/api/chat/stream", json=HELLO) as resp:
        body = await resp.text()
    events = parse_sse(body)  # asserts two lines per event
    assert streamed_text(events) == "".join(tokens)
    assert "日本語" in body  # not \\u-escaped


async def test_output_sanitizers_run_on_the_stream(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    client = await make_client(profile={**llm_profile(llm_server), "output": [
        "strip_think", "sanitize_html", "stop_at_role_leak"]})
    tokens = ["<thi", "nk>plan the", " reply</th", "ink>", "Hi <scr", "ipt>alert(1)</script>",
              "there, it's", " a < b.", "\nUser:", " and more", " lies"]
    llm_server.push(Script(tokens=tokens, delay_s=0.01))
    events = await chat_events(client, HELLO)
    assert streamed_text(events) == "Hi there, it's a < b."
    done = events[-1][1]
    assert done["full_content"] == "Hi there, it's a < b."
    assert done["finish_reason"] == "role_leak"
    rec = llm_server.requests[-1]
    await rec.wait_closed(1.0)
    assert not rec.completed  # the leak ended the LLM request early


async def test_provider_offline_names_the_address(make_client: MakeClient) -> None:
    client = await make_client(profile={"llm": {"model": "openai/test-model",
                                                "api_base": "http://127.0.0.1:9/v1"}})
    events = await chat_events(client, HELLO)
    assert names(events) == ["error"]
    err = events[0][1]
    assert err["type"] == "provider_offline"
    assert "http://127.0.0.1:9/v1" in err["error"]
    assert err["provider"] == "openai/test-model"


async def test_provider_offline_ollama(make_client: MakeClient) -> None:
    client = await make_client(profile={"llm": {"model": "ollama_chat/x",
                                                "api_base": "http://127.0.0.1:9"}})
    events = await chat_events(client, HELLO)
    assert names(events) == ["error"]
    assert events[0][1]["type"] == "provider_offline"
    assert "127.0.0.1:9" in events[0][1]["error"]


@pytest.mark.parametrize("ollama", [False, True], ids=["openai", "ollama"])
async def test_provider_error_status_and_mid_stream_drop(
    make_client: MakeClient, llm_server: LLMTestServer, ollama: bool,
) -> None:
    client = await make_client(profile=llm_profile(llm_server, ollama=ollama))
    llm_server.push(Script(status=500, error_message="model exploded"))
    events = await chat_events(client, HELLO)
    assert names(events) == ["error"]
    assert events[0][1]["type"] == "provider_error"
    assert "model exploded" in events[0][1]["error"]

    llm_server.push(Script(tokens=["One.", " Two", " three"], drop_after=2))
    events = await chat_events(client, HELLO)
    assert names(events)[0] == "provider_connected"
    assert names(events)[-1] == "error"
    assert "done" not in names(events)
    assert events[-1][1]["type"] == "provider_error"
    assert streamed_text(events) == "One. Two"


@pytest.mark.parametrize("ollama", [False, True], ids=["openai", "ollama"])
async def test_hanging_provider_times_out_within_timeout_s(
    make_client: MakeClient, llm_server: LLMTestServer, ollama: bool,
) -> None:
    client = await make_client(profile=llm_profile(llm_server, ollama=ollama, timeout_s=1))
    llm_server.push(Script(tokens=["Hi", " there"], hang_after=1))
    started = time.perf_counter()
    events = await chat_events(client, HELLO)
    elapsed = time.perf_counter() - started
    assert names(events)[-1] == "error"
    assert events[-1][1]["type"] == "timeout"
    assert streamed_text(events) == "Hi"
    assert elapsed < 1 + 1.5


async def test_slow_headers_time_out(make_client: MakeClient, llm_server: LLMTestServer) -> None:
    client = await make_client(profile=llm_profile(llm_server, timeout_s=0.5))
    llm_server.push(Script(headers_delay_s=3))
    started = time.perf_counter()
    events = await chat_events(client, HELLO)
    assert names(events) == ["error"] and events[0][1]["type"] == "timeout"
    assert time.perf_counter() - started < 0.5 + 1.5


async def test_garbage_chunks_are_skipped(make_client: MakeClient,
                                          llm_server: LLMTestServer) -> None:
    client = await make_client(profile=llm_profile(llm_server))
    llm_server.push(Script(tokens=["A", "B", "C", "D"], garbage_at=2))
    events = await chat_events(client, HELLO)
    assert names(events)[-1] == "done"
    assert streamed_text(events).startswith("AB") and streamed_text(events).endswith("D")


async def test_keepalive_comments_while_waiting(
    make_client: MakeClient, llm_server: LLMTestServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_S", 0.1)
    client = await make_client(profile=llm_profile(llm_server))
    llm_server.push(Script(tokens=["Late", " reply."], first_delay_s=0.5))
    async with client.post("/api/chat/stream", json=HELLO) as resp:
        body = await resp.text()
    assert body.count(": keep-alive\n\n") >= 2
    assert names(parse_sse(body))[-1] == "done"


async def test_bad_requests_are_4xx_before_any_stream(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    card = add_card(tmp_path)
    client = await make_client(profile=llm_profile(llm_server))
    cases = [
        (b"{not json", 400, "malformed JSON"),
        (b'{"messages": []}', 422, "no non-empty message"),
        (b'{"message": "hi", "messages": [{"role": "user", "content": "x"}]}', 422, "not both"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', 422, "role"),
        (b'{"message": 5}', 422, "message"),
        (b'{"message": "hi", "conversation_id": "../etc"}', 422, "conversation_id"),
        (b'{"message": "hi", "character_id": "nobody"}', 404, "character not found: nobody"),
        (b'{"message": "hi", "character_id": "../x"}', 422, "character_id"),
        (b'{"message": "hi", "model": "bad model!"}', 422, "model"),
        (b'{"message": "hi", "model": "nosuchprovider/x"}', 400, "unknown provider"),
    ]
    for raw, status, text in cases:
        async with client.post("/api/chat/stream", data=raw,
                               headers={"Content-Type": "application/json"}) as resp:
            body = await resp.json()
            assert resp.status == status, (raw, body)
            assert body["success"] is False
            assert text in body["error"] or text in str(body["detail"]), (raw, body)
    assert llm_server.requests == []  # nothing reached the LLM
    # asking for a character has no side effect: it does not become active
    async with client.get(f"/api/characters/{card}") as resp:
        assert resp.status == 200
    events = await chat_events(client, {"message": "hi", "character_id": card})
    assert events[-1][1]["character"] == "Seraphina"
    assert client.app is not None
    from companion_engine.keys import ENGINE

    assert client.app[ENGINE].characters.active_id is None


async def test_stage_error_ends_the_stream(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "broken_output.py").write_text(
        "from companion_engine import hookimpl\n"
        "from companion_engine.stages import Sanitizer\n"
        "class Boom(Sanitizer):\n"
        "    name = 'boom'\n"
        "    async def process(self, chunks, turn):\n"
        "        async for c in chunks:\n"
        "            if 'bad' in c:\n"
        "                raise ValueError('cannot handle ' + c)\n"
        "            yield c\n"
        "@hookimpl\n"
        "def register_sanitizers():\n"
        "    return [Boom]\n")
    client = await make_client(profile={**llm_profile(llm_server), "output": ["boom"]},
                               root=tmp_path)
    llm_server.push(Script(tokens=["fine", " bad", " never"], delay_s=0.01))
    events = await chat_events(client, HELLO)
    assert names(events)[-1] == "error"
    err = events[-1][1]
    assert err["type"] == "stage_error"
    assert "boom" in err["error"] and "cannot handle  bad" in err["error"]
    assert streamed_text(events) == "fine"
    await llm_server.requests[-1].wait_closed(1.0)
    # the server is fine afterwards
    llm_server.push(Script(tokens=["ok"]))
    assert names(await chat_events(client, HELLO))[-1] == "done"


async def test_turn_completed_hook_sees_the_result(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "recorder.py").write_text(
        "from companion_engine import hookimpl\n"
        "SEEN = []\n"
        "@hookimpl\n"
        "async def turn_completed(engine, turn):\n"
        "    r = turn.result\n"
        "    SEEN.append((r.status, r.content, turn.conversation_id))\n")
    client = await make_client(profile=llm_profile(llm_server), root=tmp_path)
    llm_server.push(Script(tokens=["Done", "."]))
    await chat_events(client, {"message": "hi", "conversation_id": "c1"})
    import sys

    seen = sys.modules["companion_local_plugins.recorder"].SEEN
    assert seen == [("complete", "Done.", "c1")]


async def test_many_concurrent_streams(make_client: MakeClient, make_config: MakeConfig,
                                       llm_server: LLMTestServer) -> None:
    client = await make_client(make_config(profile=llm_profile(llm_server),
                                           config={"server": {"max_streams_per_ip": 16}}))
    llm_server.default = Script(tokens=[f"w{i} " for i in range(20)], delay_s=0.002)
    results = await asyncio.gather(*(chat_events(client, HELLO) for _ in range(8)))
    for events in results:
        assert names(events)[-1] == "done"
        assert streamed_text(events) == "".join(f"w{i} " for i in range(20))
