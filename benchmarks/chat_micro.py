"""Chat, in-process micro-benchmarks (diagnostics, not the end-to-end goal figures).

Each times one part of a streamed turn alone, in this process, best of ``--repeat``:

1. engine alone: a full ``TurnRunner`` turn on the benchmark profile (prompt assembly,
   ``strip_think`` + ``sanitize_html`` + ``stop_at_role_leak``, the tap, the sentence
   splitter, SSE encoding of every event, SQLite storage) whose LLM stream replays N
   text pieces from memory, and whose events are encoded but not written to a socket;
2. native client parsing alone: N OpenAI ``chat.completion.chunk`` SSE events (as the
   scripted server writes them) fed through ``SSEDataParser`` + orjson decoding, in
   64 KB reads; and the same for Ollama NDJSON lines;
3. SSE event encoding alone: one ``content`` event per token.

The end-to-end figures (engine, LLM server and client in three processes) are
``benchmarks/chat_overhead.py``.

    .venv/bin/python benchmarks/chat_micro.py [--tokens 2000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import yaml
from aiohttp import web
from loguru import logger

from companion_engine.app import create_app
from companion_engine.chat.request import ChatRequest
from companion_engine.chat.runner import TurnRunner
from companion_engine.chat.sse import encode_event, timestamp
from companion_engine.chat.turns import make_turn
from companion_engine.configload import load_config
from companion_engine.keys import ENGINE
from companion_engine.llm import LLMGateway, LLMStream
from companion_engine.llm_native import NDJSONParser, SSEDataParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import words


class ReplayStream(LLMStream):
    """An LLM stream that yields pieces from memory: no client, no provider."""

    def __init__(self, base: LLMStream, pieces: list[str]) -> None:
        super().__init__(base.target, base.messages, base.timeout_s, base.max_chars)
        self.pieces = pieces

    async def open(self) -> None:
        pass

    async def deltas(self) -> AsyncIterator[str]:
        for piece in self.pieces:
            self.chunk_count += 1
            yield piece
        self.finish_reason = "stop"

    async def aclose(self) -> None:
        pass


async def engine_alone(app: web.Application, pieces: list[str]) -> float:
    engine = app[ENGINE]
    out: list[bytes] = []

    async def emit(event: str, data: dict[str, Any]) -> None:
        out.append(encode_event(event, data))

    original = LLMGateway.stream

    def replay(self: LLMGateway, *args: Any, **kwargs: Any) -> LLMStream:
        return ReplayStream(original(self, *args, **kwargs), pieces)

    LLMGateway.stream = replay  # type: ignore[method-assign]
    started = time.perf_counter()
    try:
        req = ChatRequest.model_validate({"message": "go", "conversation_id": "bench"})
        async with engine.lease() as pipeline:
            turn = await make_turn(engine, pipeline, req)
            runner = TurnRunner(engine, pipeline, turn, speak=False, store_history=True)
            await runner.prepare()
            result = await runner.run(emit)
    finally:
        LLMGateway.stream = original  # type: ignore[method-assign]
    elapsed = time.perf_counter() - started
    assert result.content == "".join(pieces), result.content[:80]
    assert len(out) > len(pieces)
    await engine.store.delete_conversation("bench")
    return elapsed


def openai_wire(pieces: list[str]) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        return b"data: " + json.dumps({
            "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
            "model": "test-model", "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": finish, "logprobs": None}],
        }).encode() + b"\n\n"
    return b"".join(chunk({"content": p}, None) for p in pieces) + chunk({}, "stop") + \
        b"data: [DONE]\n\n"


def ollama_wire(pieces: list[str]) -> bytes:
    return b"".join(json.dumps({
        "model": "test-model", "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": p}, "done": False}).encode() + b"\n"
        for p in pieces)


def parse_alone(wire: bytes, sse: bool) -> float:
    parser = SSEDataParser() if sse else NDJSONParser()
    started = time.perf_counter()
    got = 0
    for i in range(0, len(wire), 65536):
        for item in parser.feed(wire[i:i + 65536]):
            if item == b"[DONE]":
                break
            chunk = orjson.loads(item)
            if sse:
                choices = chunk.get("choices")
                if choices and (choices[0].get("delta") or {}).get("content"):
                    got += 1
            elif chunk["message"]["content"]:
                got += 1
    return time.perf_counter() - started


def encode_alone(pieces: list[str]) -> float:
    started = time.perf_counter()
    for i, p in enumerate(pieces):
        encode_event("content", {"content": p, "provider": "openai/test-model",
                                 "chunk_index": i, "timestamp": timestamp()})
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    root = Path(tempfile.mkdtemp(prefix="chat-micro-"))
    (root / "profiles").mkdir()
    (root / "profiles" / "default.yaml").write_text(yaml.safe_dump({
        "llm": {"model": "openai/test-model", "api_base": "http://127.0.0.1:9/v1",
                "max_tokens": 4096},
        "output": ["strip_think", "sanitize_html", "stop_at_role_leak"],
        "speech": {"enabled": False}}))
    (root / "companion.yaml").write_text(yaml.safe_dump({"reload": False}))
    app = create_app(load_config(root / "companion.yaml", env={}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    n = args.tokens
    pieces = words(n)
    try:
        await engine_alone(app, words(50))
        turn = min([await engine_alone(app, pieces) for _ in range(args.repeat)])
    finally:
        await runner.cleanup()
    sse = min(parse_alone(openai_wire(pieces), True) for _ in range(args.repeat))
    nd = min(parse_alone(ollama_wire(pieces), False) for _ in range(args.repeat))
    enc = min(encode_alone(pieces) for _ in range(args.repeat))
    us = 1e6 / n
    print(f"in-process micro-benchmarks, {n} tokens, best of {args.repeat}:")
    print(f"  engine alone (turn, LLM replayed)   {turn * us:6.1f} µs/token")
    print(f"  native OpenAI SSE parse + decode    {sse * us:6.1f} µs/token")
    print(f"  native Ollama NDJSON parse + decode {nd * us:6.1f} µs/token")
    print(f"  SSE content event encoding          {enc * us:6.1f} µs/token")


if __name__ == "__main__":
    asyncio.run(main())
