"""Start-up, end to end: to the first answered /health, to the first chat turn's ``done``, and
the memory an idle server holds.

Each run starts a fresh ``companion serve`` (its own process; the scripted LLM server in
another; this script is the client):

- *health*: spawn -> first ``/health`` 200, for the shipped default profile (the full
  prompt pipeline, espeak) next to a bare one-route aiohttp app started the same way
  (the baseline);
- *first turn*: spawn -> the ``done`` of a chat turn sent as soon as ``/health``
  answers (speech off), on the native client and on LiteLLM (``llm.native: off``);
  goal: < 1.5 s;
- *idle RSS*: resident memory once idle after start-up (1 s after ``/health``) and
  after that first turn (1 s later); goal: < 100 MB with a native-only profile, speech
  off.

    .venv/bin/python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    REPO,
    EngineProcess,
    LLMServerProcess,
    child_env,
    free_port,
    llm_settings,
    median,
    print_table,
    session,
    stream_chat,
)

BARE = """
import sys
from aiohttp import web
async def health(request):
    return web.json_response({"status": "healthy"})
app = web.Application()
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


async def bare_health(root: Path) -> float:
    import aiohttp

    port = free_port()
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(root / "bare.py"), str(port), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=child_env())
    try:
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(f"http://127.0.0.1:{port}/health") as r:
                        if r.status == 200:
                            return time.perf_counter() - started
                except aiohttp.ClientError:
                    await asyncio.sleep(0.005)
    finally:
        proc.terminate()
        await proc.wait()


async def first_turn(profile: dict, llm: LLMServerProcess) -> dict[str, float]:
    engine = EngineProcess(profile)
    engine.spawn()
    try:
        health = await engine.wait_healthy()
        await llm.push({"tokens": ["Hello", " there", "."]})
        async with session() as s:
            r = await stream_chat(s, engine.url, {"message": "hi"})
        assert r.done is not None, (r.status, r.error, engine.log_tail())
        done = r.ended - engine.spawned_at
        await asyncio.sleep(1.0)
        after_turn = engine.rss_mb()
        return {"health": health, "done": done, "rss_turn": after_turn}
    finally:
        engine.stop()


async def idle_rss(profile: dict) -> float:
    engine = await EngineProcess(profile).start()
    try:
        await asyncio.sleep(1.0)
        return engine.rss_mb()
    finally:
        engine.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    shipped = yaml.safe_load((REPO / "profiles" / "default.yaml").read_text())
    llm = LLMServerProcess()
    rows_health = []
    results: dict[str, list[dict[str, float]]] = {"native": [], "litellm": []}
    idle: dict[str, list[float]] = {"native": [], "litellm": [], "shipped": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "bare.py").write_text(BARE)
            bare, engine_health = [], []
            for _ in range(args.runs):
                bare.append(await bare_health(root))
                e = EngineProcess(shipped)
                e.spawn()
                try:
                    engine_health.append(await e.wait_healthy())
                finally:
                    e.stop()
            rows_health = [("`companion serve` (shipped default profile) → /health 200",
                            f"{median(engine_health) * 1000:.0f} ms",
                            f"{max(engine_health) * 1000:.0f} ms"),
                           ("bare one-route aiohttp app (baseline)",
                            f"{median(bare) * 1000:.0f} ms", f"{max(bare) * 1000:.0f} ms")]
        for _ in range(args.runs):
            for path in ("native", "litellm"):
                profile = {"llm": llm_settings(llm, native="auto" if path == "native"
                                               else "off"), "speech": {"enabled": False}}
                results[path].append(await first_turn(profile, llm))
                idle[path].append(await idle_rss(profile))
            idle["shipped"].append(await idle_rss(shipped))
    finally:
        llm.stop()

    print(f"median of {args.runs} runs; measured at {time.strftime('%Y-%m-%d %H:%M')}\n")
    print_table(["what", "median", "max"], rows_health)
    print()
    rows = []
    for path, runs in results.items():
        rows.append((f"{path} client, speech off",
                     f"{median(r['health'] for r in runs) * 1000:.0f} ms",
                     f"{median(r['done'] for r in runs) * 1000:.0f} ms",
                     f"{max(r['done'] for r in runs) * 1000:.0f} ms",
                     f"{median(idle[path]):.0f} MB",
                     f"{median(r['rss_turn'] for r in runs):.0f} MB"))
    rows.append(("shipped default profile (ollama_chat: native client), speech on (espeak)",
                 "", "", "", f"{median(idle['shipped']):.0f} MB", ""))
    print_table(["profile", "spawn → /health", "spawn → first turn done", "max",
                 "idle RSS", "RSS after first turn"], rows)


if __name__ == "__main__":
    asyncio.run(main())
