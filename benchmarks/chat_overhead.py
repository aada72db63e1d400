"""Chat, end to end: what one streamed token costs as a client sees it.

Three processes: the scripted LLM server, a real ``companion serve`` per LLM path
(``litellm``: ``llm.native: off``; ``native``: the engine's own OpenAI/Ollama client),
and this script as the client. Each run streams the same N tokens (as fast as the
server can send them) three ways, interleaved so machine noise hits all alike:

1. baseline: a plain ``litellm.acompletion(stream=True)`` loop in this process against
   the same server, reading ``delta.content``: the least any LiteLLM-based server does;
2. each engine, through each route asked for (``--routes``), the same turn:
   ``api``: ``POST /api/chat/stream`` with server-managed history (``message`` +
   ``conversation_id``, so storage is in), read to ``done``;
   ``api-messages``: the same route with client-managed history (``messages``, nothing
   stored), the like-for-like baseline of
   ``v1``: ``POST /v1/chat/completions`` (``model: companion``, ``stream: true``,
   ``stream_options.include_usage``), OpenAI's chunks read to ``data: [DONE]``
   (issue 14: the ``/v1`` stream costs no more per token than ``/api/chat/stream``).
   The default output sanitizers + ``stop_at_role_leak``, the sentence splitter,
   speech off.

Reported (median of the runs): wall time per token, the engine's extra time per token
over the plain loop (goal on the LiteLLM path: < 20 µs), the turn's ratio to the plain
loop (goal on the native path: < 1.0), and CPU per token of the engine process (read
from outside, all threads, LiteLLM's background work after the turn included; goal on
the native path: <= 60 µs) next to the plain loop's own CPU per token; with ``v1`` and
``api-messages`` both measured, ``/v1`` minus ``/api`` per token (wall and engine CPU,
median of the per-run differences).

    .venv/bin/python benchmarks/chat_overhead.py [--tokens 2000] [--runs 7]
        [--paths litellm,native] [--routes api,api-messages,v1] [--profile DIR]
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
    stream_openai,
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


ROUTES = {
    "api": "/api/chat/stream, server history",
    "api-messages": "/api/chat/stream, client history",
    "v1": "/v1/chat/completions",
}


async def engine_turn(engine: EngineProcess, llm: LLMServerProcess, tokens: list[str],
                      route: str = "api") -> tuple[float, float]:
    """(wall seconds, engine CPU seconds) of one streamed turn through ``route``."""
    await llm.push({"tokens": tokens})
    messages = [{"role": "user", "content": "go"}]
    async with session() as s:
        cpu0 = engine.cpu_s()
        if route == "v1":
            r = await stream_openai(s, engine.url, {
                "model": "companion", "messages": messages,
                "stream_options": {"include_usage": True}})
        elif route == "api-messages":
            r = await stream_chat(s, engine.url, {"messages": messages})
        else:
            r = await stream_chat(s, engine.url, {"message": "go",
                                                  "conversation_id": uuid.uuid4().hex})
        cpu1 = await engine.cpu_after_settle()
    assert r.done is not None, (route, r.status, r.error, r.body[:300])
    assert r.done["full_content"] == "".join(tokens), (route, r.done["full_content"][:80])
    return r.wall, cpu1 - cpu0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--paths", default="litellm,native",
                    help="comma-separated engine LLM paths: litellm, native")
    ap.add_argument("--routes", default="api",
                    help="comma-separated routes each engine is measured through: "
                         + ", ".join(f"{k} ({v})" for k, v in ROUTES.items()))
    ap.add_argument("--ollama", action="store_true", help="the Ollama protocol (NDJSON)")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy each engine during the measured runs (DIR/chat-PATH.txt)")
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    routes = [r for r in args.routes.split(",") if r]
    if unknown := set(routes) - set(ROUTES):
        raise SystemExit(f"unknown routes: {', '.join(sorted(unknown))}")
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
                for route in routes:
                    await engine_turn(engine, llm, words(50), route)
        plain: list[tuple[float, float]] = []
        turns: dict[tuple[str, str], list[tuple[float, float]]] = {
            (p, r): [] for p in paths for r in routes}
        spies = []
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            spies = [PySpy(e.pid, args.profile / f"chat-{p}.txt") for p, e in engines.items()]
        for i in range(args.runs):
            plain.append(await plain_litellm_turn(llm, tokens, ollama=args.ollama))
            for path, engine in engines.items():
                # the routes' order turns each run, so no route always goes first
                for route in routes[i % len(routes):] + routes[:i % len(routes)]:
                    turns[path, route].append(await engine_turn(engine, llm, tokens, route))
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
    for (path, route), runs in turns.items():
        extra = median((w - pw) * us for (w, _), (pw, _) in zip(runs, plain, strict=True))
        ratio = median(w / pw for (w, _), (pw, _) in zip(runs, plain, strict=True))
        label = f"engine, {path} path" + (f", {ROUTES[route]}" if routes != ["api"] else "")
        rows.append((f"{label} (`companion serve`)",
                     f"{median(w for w, _ in runs) * us:.1f}", f"{extra:+.1f}", f"{ratio:.2f}",
                     f"{median(c for _, c in runs) * us:.1f}"))
    print_table(["what", "wall µs/token", "extra µs/token vs plain loop",
                 "turn / plain loop", "CPU µs/token"], rows)
    if "v1" in routes and len(routes) > 1:
        print("\n/v1/chat/completions minus /api/chat/stream, per token (median of the "
              "per-run differences, same engine, same turn):\n")
        diff_rows = []
        for path in paths:
            for base in (r for r in routes if r != "v1"):
                pairs = list(zip(turns[path, "v1"], turns[path, base], strict=True))
                diff_rows.append((path, ROUTES[base],
                                  f"{median((v - a) * us for (v, _), (a, _) in pairs):+.1f}",
                                  f"{median((v - a) * us for (_, v), (_, a) in pairs):+.1f}"))
        print_table(["path", "against", "wall µs/token", "engine CPU µs/token"], diff_rows)
    print(f"\n(plain loop turn: {base_wall * 1000:.0f} ms; "
          f"engine turns: " + ", ".join(
              f"{p}{'' if routes == ['api'] else ' ' + r} {median(w for w, _ in t) * 1000:.0f} ms"
              for (p, r), t in turns.items()) + ")")
    print(f"measured at {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    asyncio.run(main())
