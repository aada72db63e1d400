"""Many streams at once, end to end: do tokens still arrive as smoothly as the LLM sends them?

The scripted LLM server (its own process) streams every turn at ``--rate`` tokens/s and
records when it wrote each token; ``companion serve`` (its own process) relays them; this
script (the client) opens N streams (starts spread over one second, as users arrive),
and timestamps each ``content`` event on arrival. For token i of a stream:

- *extra gap* = (client gap between tokens i-1 and i) - (server gap between them): the
  jitter the engine adds (goal: p99 < 100 ms at 200 streams; all streams complete);
- *delay* = client arrival - server send (same monotonic clock in both processes).

Also printed: time to first token, CPU of each process over the run (the client's, so
a saturated client is not mistaken for a slow engine), streams completed.

    .venv/bin/python benchmarks/concurrency.py [--streams 100,200,400] [--rate 30]
        [--tokens 150] [--runs 3] [--paths litellm,native] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    EngineProcess,
    LLMServerProcess,
    PySpy,
    StreamResult,
    llm_settings,
    median,
    percentile,
    print_table,
    session,
    stream_chat,
    words,
)

from companion_engine.config import LLMConfig, ServerConfig


def profile_for(llm: LLMServerProcess, path: str) -> dict[str, Any]:
    native = None
    if "native" in LLMConfig.model_fields:
        native = "off" if path == "litellm" else "auto"
    return {"llm": llm_settings(llm, native=native), "speech": {"enabled": False}}


async def one_level(engine: EngineProcess, llm: LLMServerProcess, streams: int, rate: float,
                    tokens: int, client_history: bool = False) -> dict[str, Any]:
    await llm.set_default({"tokens": words(tokens), "delay_s": 1 / rate})
    await llm.clear()
    tag = uuid.uuid4().hex[:8]
    client_cpu0, engine_cpu0, llm_cpu0 = time.process_time(), engine.cpu_s(), llm.cpu_s()
    started = time.perf_counter()
    async with session() as s:
        async def one(i: int) -> StreamResult:
            await asyncio.sleep(i / streams)  # arrivals spread over one second
            body: dict[str, Any] = (
                {"messages": [{"role": "user", "content": f"{tag}-{i}"}]} if client_history
                else {"message": f"{tag}-{i}", "conversation_id": f"{tag}-{i}"})
            return await stream_chat(s, engine.url, body)
        results = await asyncio.gather(*(one(i) for i in range(streams)),
                                       return_exceptions=True)
    wall = time.perf_counter() - started
    cpu = {"engine": engine.cpu_s() - engine_cpu0, "llm": llm.cpu_s() - llm_cpu0,
           "client": time.process_time() - client_cpu0}
    records = {r["last_user"]: r for r in await llm.requests()}
    extra: list[float] = []
    delay: list[float] = []
    ttft: list[float] = []
    completed = mismatched = 0
    failures: list[str] = []
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            failures.append(f"{type(r).__name__}: {r}")
            continue
        if r.done is None:
            failures.append(f"status {r.status} {r.error or r.body[:120]!r}")
            continue
        completed += 1
        rec = records.get(f"{tag}-{i}")
        if rec is None or len(rec["sent_at"]) != len(r.content_at):
            mismatched += 1
            continue
        sent, got = rec["sent_at"], r.content_at
        ttft.append(got[0] - r.started)
        delay.extend(g - s_ for g, s_ in zip(got, sent, strict=True))
        extra.extend((got[k] - got[k - 1]) - (sent[k] - sent[k - 1]) for k in range(1, len(got)))
    return {"streams": streams, "completed": completed, "mismatched": mismatched,
            "failures": failures[:3], "wall": wall, "cpu": cpu, "extra": extra,
            "delay": delay, "ttft": ttft}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", default="100,200,400")
    ap.add_argument("--rate", type=float, default=30.0, help="tokens per second per stream")
    ap.add_argument("--tokens", type=int, default=150, help="tokens per stream")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--paths", default="litellm,native")
    ap.add_argument("--workers", default=None, help="server.workers (when the engine has it)")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy the engine at each level (DIR/streams-PATH-N.txt)")
    ap.add_argument("--client-history", action="store_true",
                    help="client-managed history (nothing stored) instead of conversations")
    args = ap.parse_args()
    levels = [int(x) for x in args.streams.split(",")]
    paths = [p for p in args.paths.split(",") if p]
    if "native" in paths and "native" not in LLMConfig.model_fields:
        print("(no native LLM path in this engine: measuring litellm only)")
        paths = [p for p in paths if p != "native"]
    config: dict[str, Any] = {}
    if args.workers is not None:
        if "workers" not in ServerConfig.model_fields:
            raise SystemExit("this engine has no server.workers")
        config = {"server": {"max_streams_per_ip": 10_000,
                             "workers": args.workers if args.workers == "auto"
                             else int(args.workers)}}

    llm = LLMServerProcess()
    rows = []
    try:
        for path in paths:
            workers = int(args.workers) if args.workers and args.workers != "auto" else 1
            engine = await EngineProcess(profile_for(llm, path), config=config).start(workers)
            try:
                await one_level(engine, llm, 5, args.rate, 10)  # warm up
                for level in levels:
                    spy = None
                    if args.profile is not None:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        spy = PySpy(engine.pid, args.profile / f"streams-{path}-{level}.txt")
                    runs = [await one_level(engine, llm, level, args.rate, args.tokens,
                                            args.client_history) for _ in range(args.runs)]
                    if spy is not None:
                        spy.stop()
                    rows.append((path, runs))
                    last = runs[-1]
                    if last["failures"]:
                        print(f"  {path} {level}: failures, e.g. {last['failures']}")
            finally:
                engine.stop()
    finally:
        llm.stop()

    print(f"\n{args.tokens} tokens per stream at {args.rate:g} tokens/s; {args.runs} runs per "
          f"row (median of the runs' figures); workers: {args.workers or 'none (1 process)'}\n")
    table = []
    for path, runs in rows:
        def med(f: Any, runs: list[dict[str, Any]] = runs) -> float:
            return median(f(r) for r in runs)

        def pct(key: str, p: float, r: dict[str, Any]) -> float:
            return percentile(r[key], p) * 1000 if r[key] else float("nan")

        streams = runs[0]["streams"]
        table.append((
            path, streams, f"{min(r['completed'] for r in runs)}/{streams}",
            f"{med(lambda r: pct('extra', 50, r)):.1f}",
            f"{med(lambda r: pct('extra', 99, r)):.1f}",
            f"{med(lambda r: pct('delay', 50, r)):.1f}",
            f"{med(lambda r: pct('delay', 99, r)):.1f}",
            f"{med(lambda r: pct('ttft', 50, r)):.0f} / {med(lambda r: pct('ttft', 99, r)):.0f}",
            f"{med(lambda r: r['cpu']['engine'] / r['wall'] * 100):.0f}%",
            f"{med(lambda r: r['cpu']['client'] / r['wall'] * 100):.0f}%",
            f"{med(lambda r: r['cpu']['llm'] / r['wall'] * 100):.0f}%",
        ))
    print_table(["path", "streams", "completed (worst run)", "extra gap p50 ms",
                 "extra gap p99 ms", "delay p50 ms", "delay p99 ms", "ttft p50 / p99 ms",
                 "engine CPU", "client CPU", "LLM server CPU"], table)
    print(f"measured at {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    asyncio.run(main())
