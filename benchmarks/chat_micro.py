"""Chat: the engine's own work per streamed token, next to a plain LiteLLM loop.

Both sides stream the same N tokens from the same scripted local server (in
this process, so its cost is in both numbers and cancels out):

1. baseline: ``async for chunk in await litellm.acompletion(..., stream=True)``,
   reading ``delta.content``: the least any LiteLLM-based server must do;
2. engine: a full ``TurnRunner`` turn on the default profile (prompt assembly,
   LiteLLM, ``strip_think`` + ``sanitize_html`` + ``stop_at_role_leak``, the tap, the
   sentence splitter, SSE encoding of every event, storage of the turn), with
   ``emit`` keeping the encoded bytes instead of writing a socket;
3. http: the same turn through ``POST /api/chat/stream`` over loopback, with the
   aiohttp client reading the stream in this process too (an upper bound:
   includes the client's own parsing and both sides of the socket).

4. replay: the engine turn again, but its LLM stream replays the LiteLLM chunk
   objects recorded from a real stream of the same N tokens, so LiteLLM and the
   provider cost nothing: what is left is the engine's own work, measured
   directly (the wall-clock difference of 1 and 2 is within LiteLLM's noise).

Per-token overhead = replay / N (and, noisier, (engine - baseline) / N). Goal: under 20 µs.

    .venv/bin/python benchmarks/chat_overhead.py [--tokens 2000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import yaml
from aiohttp import web
from loguru import logger

from companion_engine.app import create_app
from companion_engine.chat.request import ChatRequest
from companion_engine.chat.runner import TurnRunner
from companion_engine.chat.sse import encode_event
from companion_engine.chat.turns import make_turn
from companion_engine.configload import load_config
from companion_engine.keys import ENGINE
from companion_engine.llm import LLMStream, get_litellm
from companion_engine.testing import LLMTestServer, Script, free_port


def script_tokens(n: int) -> list[str]:
    words = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog",
             " while", " it's", " raining", " <b>hard</b>", "."]
    return [words[i % len(words)] for i in range(n)]


async def baseline(server: LLMTestServer, n: int) -> float:
    litellm = await get_litellm()
    server.push(Script(tokens=script_tokens(n)))
    started = time.perf_counter()
    resp = await litellm.acompletion(
        model="openai/test-model", api_base=server.openai_base, api_key="x",
        messages=[{"role": "user", "content": "go"}], stream=True, max_retries=0,
        num_retries=0, stream_options={"include_usage": True})
    got = 0
    async for chunk in resp:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
    assert got == n, got
    return time.perf_counter() - started


async def engine_turn(app: web.Application, server: LLMTestServer, n: int) -> float:
    engine = app[ENGINE]
    server.push(Script(tokens=script_tokens(n)))
    out: list[bytes] = []

    async def emit(event: str, data: dict[str, Any]) -> None:
        out.append(encode_event(event, data))

    started = time.perf_counter()
    req = ChatRequest.model_validate({"message": "go", "conversation_id": "bench"})
    async with engine.lease() as pipeline:
        turn = await make_turn(engine, pipeline, req)
        runner = TurnRunner(engine, pipeline, turn, speak=False, store_history=True)
        await runner.prepare()
        result = await runner.run(emit)
    elapsed = time.perf_counter() - started
    assert result.status == "complete", result
    assert result.content == "".join(script_tokens(n)), result.content[:80]
    await engine.store.delete_conversation("bench")
    return elapsed


class Replay:
    """Recorded LiteLLM chunks, served again as a stream."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks

    def __aiter__(self) -> Any:
        return self._gen()

    async def _gen(self) -> Any:
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        pass


async def record_chunks(server: LLMTestServer, n: int) -> list[Any]:
    litellm = await get_litellm()
    server.push(Script(tokens=script_tokens(n)))
    resp = await litellm.acompletion(
        model="openai/test-model", api_base=server.openai_base, api_key="x",
        messages=[{"role": "user", "content": "go"}], stream=True, max_retries=0,
        num_retries=0, stream_options={"include_usage": True})
    return [chunk async for chunk in resp]


async def replay_turn(app: web.Application, chunks: list[Any], n: int) -> float:
    engine = app[ENGINE]
    out: list[bytes] = []

    async def emit(event: str, data: dict[str, Any]) -> None:
        out.append(encode_event(event, data))

    async def replayed_open(stream: LLMStream) -> None:
        stream._response = Replay(chunks)

    started = time.perf_counter()
    req = ChatRequest.model_validate({"message": "go", "conversation_id": "bench"})
    original = LLMStream.open
    LLMStream.open = replayed_open  # type: ignore[method-assign]
    try:
        async with engine.lease() as pipeline:
            turn = await make_turn(engine, pipeline, req)
            runner = TurnRunner(engine, pipeline, turn, speak=False, store_history=True)
            await runner.prepare()
            result = await runner.run(emit)
    finally:
        LLMStream.open = original  # type: ignore[method-assign]
    elapsed = time.perf_counter() - started
    assert result.content == "".join(script_tokens(n)), result.content[:80]
    assert len(out) > n
    await engine.store.delete_conversation("bench")
    return elapsed


async def http_turn(url: str, server: LLMTestServer, n: int) -> float:
    server.push(Script(tokens=script_tokens(n)))
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.post(
        url, json={"messages": [{"role": "user", "content": "go"}]}) as resp:
        body = await resp.read()
    elapsed = time.perf_counter() - started
    assert b"event: done" in body
    return elapsed


async def settle() -> None:
    """Let LiteLLM's background logging of the last stream finish before the next one."""
    me = asyncio.current_task()
    for _ in range(200):
        busy = [t for t in asyncio.all_tasks() if t is not me and not t.done()
                and "litellm" in repr(t.get_coro())]
        if not busy:
            break
        await asyncio.gather(*busy, return_exceptions=True)
    await asyncio.sleep(0.05)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    logger.remove()  # one log line per turn would be measured too; keep the console quiet
    logger.add(sys.stderr, level="WARNING")

    server = await LLMTestServer.start()
    root = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    (root / "profiles").mkdir()
    (root / "profiles" / "default.yaml").write_text(yaml.safe_dump({
        "llm": {"model": "openai/test-model", "api_base": server.openai_base,
                "max_tokens": 4096},
        "output": ["strip_think", "sanitize_html", "stop_at_role_leak"],
        "speech": {"enabled": False}}))
    (root / "companion.yaml").write_text(yaml.safe_dump({"reload": False, "rate_limit": {
        "requests": 100000, "window_s": 1}}))
    app = create_app(load_config(root / "companion.yaml", env={}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/api/chat/stream"
    n = args.tokens
    try:
        await get_litellm()
        # warm up every path once
        await baseline(server, 50)
        await engine_turn(app, server, 50)
        await http_turn(url, server, 50)
        chunks = await record_chunks(server, n)
        await replay_turn(app, chunks, n)
        base, eng, http, replay = [], [], [], []
        for _ in range(args.repeat):  # interleaved, so drift hits all alike
            for times, run in ((eng, lambda: engine_turn(app, server, n)),
                               (base, lambda: baseline(server, n)),
                               (replay, lambda: replay_turn(app, chunks, n)),
                               (http, lambda: http_turn(url, server, n))):
                times.append(await run())
                await settle()
    finally:
        await runner.cleanup()
        await server.close()

    def per_token_us(xs: list[float]) -> float:
        return min(xs) / n * 1e6  # the best run: LiteLLM's own noise is ±20 %

    b, e, h, r = per_token_us(base), per_token_us(eng), per_token_us(http), per_token_us(replay)
    rows = [("plain LiteLLM loop", b, base), ("engine turn (no socket)", e, eng),
            ("HTTP SSE turn + client", h, http), ("engine alone (replayed)", r, replay)]
    print(f"tokens per turn: {n}, repeats: {args.repeat} (best run, per token)")
    for label, us, times in rows:
        print(f"  {label:26} {us:8.1f} µs/token   (turn {min(times) * 1000:7.1f} ms)")
    print(f"  engine overhead            {e - b:8.1f} µs/token   (engine/LiteLLM {e / b:.2f}x)")
    print(f"  HTTP overhead (upper bd.)  {h - b:8.1f} µs/token   (http/LiteLLM {h / b:.2f}x)")
    verdict = "met" if r < 20 else "NOT met"
    print(f"  goal: engine's own work < 20 µs/token -> {verdict} ({r:.1f} µs)")

if __name__ == "__main__":
    asyncio.run(main())
