"""A client that leaves mid-stream cancels the LLM request at once and leaves nothing behind.

Tested twice: under pytest-aiohttp's server (which cancels handlers on disconnect)
and under a plain ``AppRunner`` like ``companion serve`` (which does not, so the
SSE writer's own watch must notice).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from companion_engine.app import create_app
from companion_engine.keys import ENGINE
from companion_engine.testing import LLMTestServer, Script, free_port
from tests.chat_helpers import llm_profile
from tests.conftest import MakeConfig

#: Every test here runs through both LLM clients (native, LiteLLM).
pytestmark = pytest.mark.usefixtures("llm_path")


async def _read_first_content(resp: aiohttp.ClientResponse) -> str:
    buf = ""
    while "event: content" not in buf:
        chunk = await resp.content.readany()
        assert chunk, "stream ended before any content"
        buf += chunk.decode()
    return buf


@pytest.mark.parametrize("ollama", [False, True], ids=["openai", "ollama"])
async def test_disconnect_cancels_llm_within_100ms_and_stores_interrupted(
    make_config: MakeConfig, llm_server: LLMTestServer, ollama: bool,
) -> None:
    for handler_cancellation in (True, False):
        cfg = make_config(profile=llm_profile(llm_server, ollama=ollama))
        app = create_app(cfg)
        runner = web.AppRunner(app, handler_cancellation=handler_cancellation)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            llm_server.push(Script(tokens=["Once", " upon", " a", " time"] + [" more"] * 200,
                                   delay_s=0.05))
            tasks_before = set(asyncio.all_tasks())
            async with aiohttp.ClientSession() as session:
                resp = await session.post(f"http://127.0.0.1:{port}/api/chat/stream",
                                          json={"message": "tell me", "conversation_id": "c-1"})
                await _read_first_content(resp)
                resp.close()  # the client goes away
                left_at = time.perf_counter()
            rec = llm_server.requests[-1]
            closed_at = await rec.wait_closed(2.0)
            assert not rec.completed
            assert closed_at - left_at < 0.1, (handler_cancellation, closed_at - left_at)

            engine = app[ENGINE]
            for _ in range(100):  # the reply is stored as the turn winds down
                conv = await engine.store.get_conversation("c-1")
                if conv and len(conv.messages) == 2:
                    break
                await asyncio.sleep(0.01)
            assert conv is not None
            user, reply = conv.messages[-2:]
            assert (user.role, user.content, user.status) == ("user", "tell me", "complete")
            assert reply.role == "assistant" and reply.status == "interrupted"
            assert reply.content.startswith("Once")
            await engine.store.delete_conversation("c-1")
            # nothing left running: no watcher, no LLM reader, no speech
            await asyncio.sleep(0.05)
            leftover = {t for t in asyncio.all_tasks() - tasks_before
                        if not t.done() and t is not asyncio.current_task()}
            assert not [t for t in leftover if "sse" in t.get_name() or "speech" in
                        t.get_name()], leftover
            assert engine.pipeline.users == 0
        finally:
            await runner.cleanup()


async def test_disconnect_while_waiting_for_first_token(
    make_config: MakeConfig, llm_server: LLMTestServer,
) -> None:
    cfg = make_config(profile=llm_profile(llm_server))
    app = create_app(cfg)
    runner = web.AppRunner(app)  # like `companion serve`: no handler cancellation
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        llm_server.push(Script(tokens=["late"], first_delay_s=30))
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"http://127.0.0.1:{port}/api/chat/stream",
                                      json={"messages": [{"role": "user", "content": "hi"}]})
            buf = b""
            while b"provider_connected" not in buf:
                buf += await resp.content.readany()
            resp.close()
            left_at = time.perf_counter()
        rec = llm_server.requests[-1]
        assert await rec.wait_closed(2.0) - left_at < 0.1
        await asyncio.sleep(0.05)
        assert app[ENGINE].pipeline.users == 0
    finally:
        await runner.cleanup()
