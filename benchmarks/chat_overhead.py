"""Chat, end to end: what one streamed token costs as a client sees it.

Three processes: the scripted LLM server, a real ``companion serve`` per LLM path
(``litellm``: ``llm.native: off``; ``native``: the engine's own OpenAI/Ollama client),
and this script as the client. Each run streams the same N tokens (as fast as the
server can send them) three ways, interleaved so machine noise hits all alike:

1. baseline: a plain ``litellm.acompletion(stream=True)`` loop in this process against
   the same server, reading ``delta.content``: the least any LiteLLM-based server does;
2. each engine: ``POST /api/chat/stream`` (server-managed history, so storage is in),
   read to ``done``; the default output sanitizers + ``stop_at_role_leak``, the sentence
   splitter, speech off.

Reported (median of the runs): wall time per token, the engine's extra time per token
over the plain loop (goal on the LiteLLM path: < 20 µs), the turn's ratio to the plain
loop (goal on the native path: < 1.0), and CPU per token of the engine process (read
from outside, all threads, LiteLLM's background work after the turn included; goal on
the native path: <= 60 µs) next to the plain loop's own CPU per token.

    .venv/bin/python benchmarks/chat_overhead.py [--tokens 2000] [--runs 7] [--paths litellm,native]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    EngineProcess,
    LLMServerProcess,
    PySpy,
    llm_settings,
    median,
    plain_litellm_turn,
    print_table,
    session,
    stream_chat,
    words,
)

from companion_engine.config import LLMConfig

OUTPUT = ["strip_think", "sanitize_html", "stop_at_role_leak"]


def profile_for(llm: LLMServerProcess, path: str, ollama: bool) -> dict:
    native = None
    if "native" in LLMConfig.model_fields:
        native = "off" if path == "litellm" else "auto"
    elif path == "native":
        raise SystemExit("this engine has no native LLM path (llm.native)")
    return {"llm": llm_settings(llm, ollama=ollama, native=native), "output": OUTPUT,
            "speech": {"enabled": False}}


async def engine_turn(engine: EngineProcess, llm: LLMServerProcess,
                      tokens: list[str]) -> tuple[float, float]:
    """(wall seconds, engine CPU seconds) of one streamed turn."""
    await llm.push({"tokens": tokens})
    async with session() as s:
        cpu0 = engine.cpu_s()
        r = await stream_chat(s, engine.url, {"message": "go",
                                              "conversation_id": uuid.uuid4().hex})
        cpu1 = await engine.cpu_after_settle()
    assert r.done is not None, (r.status, r.error, r.body[:300])
    assert r.done["full_content"] == "".join(tokens), r.done["full_content"][:80]
    return r.wall, cpu1 - cpu0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--paths", default="litellm,native",
                    help="comma-separated engine LLM paths: litellm, native")
    ap.add_argument("--ollama", action="store_true", help="the Ollama protocol (NDJSON)")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy each engine during the measured runs (DIR/chat-PATH.txt)")
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    if "native" in paths and "native" not in LLMConfig.model_fields:
        print("(no native LLM path in this engine: measuring litellm only)")
        paths = [p for p in paths if p != "native"]
    n = args.tokens
    tokens = words(n)

    llm = LLMServerProcess()
    engines: dict[str, EngineProcess] = {}
    try:
        for path in paths:
            engines[path] = await EngineProcess(profile_for(llm, path, args.ollama)).start()
        # Warm up every path (imports, first-turn caches, LiteLLM's clients).
        for _ in range(2):
            await plain_litellm_turn(llm, words(50), ollama=args.ollama)
            for engine in engines.values():
                await engine_turn(engine, llm, words(50))
        plain: list[tuple[float, float]] = []
        turns: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
        spies = []
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            spies = [PySpy(e.pid, args.profile / f"chat-{p}.txt") for p, e in engines.items()]
        for _ in range(args.runs):
            plain.append(await plain_litellm_turn(llm, tokens, ollama=args.ollama))
            for path, engine in engines.items():
                turns[path].append(await engine_turn(engine, llm, tokens))
        for spy in spies:
            spy.stop()
            print(f"profile: {spy.path}")
    finally:
        for engine in engines.values():
            engine.stop()
        llm.stop()

    us = 1e6 / n
    base_wall = median(w for w, _ in plain)
    print(f"{n} tokens per turn, {args.runs} runs (medians), protocol "
          f"{'ollama' if args.ollama else 'openai'}, LLM server, engine and client in 3 "
          "processes\n")
    rows = [("plain LiteLLM loop (client process)", f"{base_wall * us:.1f}", "—", "1.00",
             f"{median(c for _, c in plain) * us:.1f}")]
    for path, runs in turns.items():
        extra = median((w - pw) * us for (w, _), (pw, _) in zip(runs, plain, strict=True))
        ratio = median(w / pw for (w, _), (pw, _) in zip(runs, plain, strict=True))
        rows.append((f"engine, {path} path (`companion serve`)",
                     f"{median(w for w, _ in runs) * us:.1f}", f"{extra:+.1f}", f"{ratio:.2f}",
                     f"{median(c for _, c in runs) * us:.1f}"))
    print_table(["what", "wall µs/token", "extra µs/token vs plain loop",
                 "turn / plain loop", "CPU µs/token"], rows)
    print(f"\n(plain loop turn: {base_wall * 1000:.0f} ms; "
          f"engine turns: " + ", ".join(f"{p} {median(w for w, _ in r) * 1000:.0f} ms"
                                         for p, r in turns.items()) + ")")
    print(f"measured at {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    asyncio.run(main())
