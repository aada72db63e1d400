"""Issue 19.3 (the SSE half) and 19.5: a reply has a cap, a slow client holds the LLM back,
and a client gone at open is a quiet interrupt.

The reproductions of the issue: a provider that ignores ``max_tokens`` and streams more
than a megabyte; clients that never read; a client that resets right after sending its
request. Every test runs through both LLM clients (native, LiteLLM).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from companion_engine.app import create_app
from companion_engine.chat import sse
from companion_engine.testing import LLMTestServer, Script, free_port
from tests.chat_helpers import chat_events, llm_profile, names
from tests.conftest import MakeClient, MakeConfig

pytestmark = pytest.mark.usefixtures("llm_path")

#: A provider that ignores max_tokens: 1.1 MB of reply.
HUGE = ["x" * 99 + " "] * 11_000


async def test_a_reply_stops_at_the_character_cap_with_finish_reason_length(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    # max_tokens 100 -> the default cap: max(8000, 16 * 100) = 8000 characters
    client = await make_client(profile=llm_profile(llm_server, max_tokens=100))
    llm_server.push(Script(tokens=HUGE, delay_s=0.001))  # paced: the early close shows
    events = await chat_events(client, {"message": "go", "conversation_id": "cap"})
    assert names(events)[-1] == "done"
    done = events[-1][1]
    assert done["finish_reason"] == "length"
    assert len(done["full_content"]) == 8000
    assert done["full_content"] == "".join(HUGE)[:8000]
    rec = llm_server.requests[-1]
    await rec.wait_closed(2.0)
    assert not rec.completed  # the engine stopped pulling and closed the request
    assert len(rec.sent_at) < len(HUGE)
    # the stored reply is the capped one, marked with why it ended
    conv = (await (await client.get("/api/conversations/cap")).json())["data"]
    reply = conv["messages"][-1]
    assert reply["role"] == "assistant" and len(reply["content"]) == 8000
    assert reply["meta"]["finish_reason"] == "length"

    # the profile's own cap, and /api/chat says the same
    client = await make_client(profile=llm_profile(llm_server, max_reply_chars=250))
    llm_server.push(Script(tokens=HUGE))
    reply = await (await client.post("/api/chat", json={"message": "go"})).json()
    assert reply["finish_reason"] == "length" and len(reply["content"]) == 250
    # a reply shorter than the cap ends as the provider says
    llm_server.push(Script(tokens=["Short", "."]))
    reply = await (await client.post("/api/chat", json={"message": "go"})).json()
    assert (reply["finish_reason"], reply["content"]) == ("stop", "Short.")


def _raw_stream_request(port: int, body: dict[str, object], rcvbuf: int = 4096) -> socket.socket:
    """Send a chat stream request from a socket that will never read its answer."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    raw = json.dumps(body).encode()
    s.sendall(b"POST /api/chat/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(raw), raw))
    return s


@pytest.fixture
async def served(make_config: MakeConfig, llm_server: LLMTestServer
                 ) -> AsyncIterator[tuple[int, web.AppRunner]]:
    """The app on a plain ``AppRunner`` (as ``companion serve`` runs it), no reply cap."""
    cfg = make_config(profile=llm_profile(llm_server, max_reply_chars=10_000_000),
                      config={"server": {"max_streams_per_ip": 50}})
    runner = web.AppRunner(create_app(cfg))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, runner
    finally:
        await runner.cleanup()


async def _settled_counts(llm_server: LLMTestServer, n: int) -> list[int]:
    """Tokens sent per request, once they stop changing (the engine stopped pulling)."""
    last: list[int] = []
    for _ in range(150):
        await asyncio.sleep(0.2)
        counts = [len(r.sent_at) for r in llm_server.requests]
        if len(counts) == n and counts == last and all(counts):
            return counts
        last = counts
    raise AssertionError(f"the LLM streams never paused: {last}")


async def test_clients_that_do_not_read_pause_the_llm_stream(
    served: tuple[int, web.AppRunner], llm_server: LLMTestServer,
) -> None:
    port, _ = served
    # 16 KB tokens: 32 MB per reply, far more than every socket buffer on the way holds
    tokens = ["x" * 16_383 + " "] * 2_000
    llm_server.default = Script(tokens=tokens)
    clients = [_raw_stream_request(port, {"messages": [{"role": "user", "content": "hi"}]})
               for _ in range(3)]
    try:
        counts = await _settled_counts(llm_server, len(clients))
        # paused: the provider is held back, not drained into the engine's memory
        assert all(c < len(tokens) for c in counts), counts
        assert not any(r.completed for r in llm_server.requests)
    finally:
        for c in clients:
            c.close()
    # the clients leave: every LLM request is closed, nothing keeps running
    for rec in llm_server.requests:
        await rec.wait_closed(5.0)
        assert not rec.completed


async def test_a_stalled_client_is_dropped(
    served: tuple[int, web.AppRunner], llm_server: LLMTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse, "STALL_S", 0.5)
    monkeypatch.setattr(sse, "KEEPALIVE_S", 0.2)
    port, _ = served
    llm_server.default = Script(tokens=["x" * 16_383 + " "] * 2_000)
    client = _raw_stream_request(port, {"messages": [{"role": "user", "content": "hi"}]})
    try:
        rec = None
        for _ in range(100):
            await asyncio.sleep(0.1)
            if llm_server.requests:
                rec = llm_server.requests[-1]
                break
        assert rec is not None
        await rec.wait_closed(10.0)  # the engine gave up on the client and closed the LLM
        assert not rec.completed
    finally:
        client.close()


SLOW_PROMPT = """
import asyncio
from companion_engine import hookimpl
from companion_engine.stages import PromptBuilder

STARTED = []


class Slow(PromptBuilder):
    name = "slow_recall"  # a prompt stage that takes a moment (memory recall, say)

    async def build(self, turn):
        STARTED.append(turn.user_message)
        await asyncio.sleep(0.2)

@hookimpl
def register_prompt_builders():
    return [Slow]
"""


async def test_a_client_that_resets_right_after_sending_is_a_quiet_interrupt(
    make_config: MakeConfig, llm_server: LLMTestServer, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue's reproduction: the client resets while the prompt is being built, so
    the stream opens on a closed connection (which logged a traceback per request)."""
    cfg = make_config(profile={**llm_profile(llm_server), "prompt": ["slow_recall", "history"]},
                      config={"server": {"max_streams_per_ip": 50}},
                      plugin_files={"slow_recall.py": SLOW_PROMPT})
    runner = web.AppRunner(create_app(cfg))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        llm_server.default = Script(tokens=["Hello", " there", "."], delay_s=0.01)
        capfd.readouterr()
        import sys

        started = sys.modules["companion_local_plugins.slow_recall"].STARTED
        for i in range(10):
            s = _raw_stream_request(port, {"message": f"m{i}", "conversation_id": f"reset-{i}"})
            for _ in range(200):  # the turn has read the request and is building the prompt
                if f"m{i}" in started:
                    break
                await asyncio.sleep(0.01)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST
        from companion_engine.keys import ENGINE

        engine = runner.app[ENGINE]
        for _ in range(100):
            await asyncio.sleep(0.05)
            if engine.pipeline.users == 0 and all(
                    r.closed_at is not None for r in llm_server.requests):
                break
        err = capfd.readouterr().err  # loguru (the engine's log)
        assert "Traceback" not in err and "ClientConnectionResetError" not in err, err[-3000:]
        # stdlib logging (aiohttp's "Error handling request" with the traceback)
        noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
        assert not noisy, [r.getMessage() for r in noisy]
        assert engine.pipeline.users == 0  # every turn ended
        for rec in llm_server.requests:  # and any LLM request it made is closed
            assert rec.closed_at is not None
        # a normal client right after is served as usual
        llm_server.default = Script(tokens=["Still", " here", "."])
        import aiohttp

        async with aiohttp.ClientSession() as session, session.post(
                f"http://127.0.0.1:{port}/api/chat/stream", json={"message": "hi"}) as resp:
            assert "event: done" in await resp.text()
    finally:
        await runner.cleanup()
