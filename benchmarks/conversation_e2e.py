"""Conversations end to end: a turn on a long conversation, and the editing turns.

Processes: two ``companion serve`` servers on copies of one project whose database holds
a conversation of ``--messages`` stored messages (one with the store's cache of parsed
conversations, ``store.cache_messages: 0`` for the other), the scripted LLM server in a
process of its own, and this client, alternating requests between the two servers so
both see the same machine noise. Reported, median / p90 over ``--turns`` turns each:

- ``long``: a chat turn on the long conversation (the history builder keeps what fits
  its budget; the store reads the conversation every turn);
- ``short``: a chat turn on a fresh conversation (the baseline);
- ``regenerate`` and ``continue`` on the long conversation (with the cache), next to its
  chat turn: what an editing turn costs beyond a plain one.

For each: the client's time to the first ``content`` event, to the stream's end, the
engine's own ``ttft_ms``, and the engine process's CPU time per turn (from ``/proc``, in
clock ticks of 10 ms: the mean over the turns).

    .venv/bin/python benchmarks/conversation_e2e.py [--turns 30] [--messages 2000] [--profile]

``--profile`` records the cached server with ``py-spy record --threads --full-filenames``
during the measured turns and prints the frames with the most samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from voice_e2e import start_profile, top_frames  # the same py-spy helpers

from companion_engine.store import StoredMessage, open_store
from companion_engine.testing import free_port

LLM_SERVER = """
import asyncio, sys
from companion_engine.testing import LLMTestServer, Script

async def main():
    server = await LLMTestServer.start(int(sys.argv[1]))
    server.default = Script(tokens=["Hello", " there", ",", " friend", "."])
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def seed(root: Path, messages: int) -> None:
    store = await open_store("sqlite:///data/companion.db", root)
    for i in range(0, messages, 50):
        await store.append_messages("long", [
            StoredMessage("user" if j % 2 == 0 else "assistant",
                          f"Message {i + j} about the harbour, the boats and the weather.",
                          meta={"model": "openai/test-model"} if j % 2 else {"user_name": "U"})
            for j in range(min(50, messages - i))], character_id="nova")
    await store.close()


def project(root: Path, llm_port: int, cache_messages: int) -> None:
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    (root / "characters").mkdir(exist_ok=True)
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Nova", "description": "Nova is a friendly companion.", "personality": "warm",
        "scenario": "", "first_mes": "", "mes_example": ""}}
    (root / "characters" / "nova.json").write_text(json.dumps(card))
    (root / "profiles" / "default.yaml").write_text(yaml.safe_dump({
        "llm": {"model": "openai/test-model", "api_base": f"http://127.0.0.1:{llm_port}/v1",
                "timeout_s": 30},
        "character": "nova", "output": [], "speech": {"enabled": False, "tts": "none"}}))
    (root / "companion.yaml").write_text(yaml.safe_dump({
        "reload": False, "logging": {"level": "WARNING"},
        "store": {"url": "sqlite:///data/companion.db", "cache_messages": cache_messages},
        "rate_limit": {"requests": 100000, "window_s": 1},
        "server": {"max_streams_per_ip": 1000}}))


class Server:
    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name, self.port = root, name, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "companion_engine", "serve", "--config",
             str(self.root / "companion.yaml"), "--port", str(self.port), "--no-reload"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})

    async def start(self) -> None:
        self.spawn()
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/health") as r:
                        if r.status in (200, 503):
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"server {self.name} did not start")

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def stream(http: aiohttp.ClientSession, server: Server, path: str,
                 body: dict[str, Any] | None) -> dict[str, float]:
    start = time.perf_counter()
    first = None
    done: dict[str, Any] = {}
    cpu = server.cpu_s()
    async with http.post(f"http://127.0.0.1:{server.port}{path}", json=body or {}) as resp:
        assert resp.status == 200, await resp.text()
        event = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "content" and first is None:
                    first = time.perf_counter()
                elif event == "done":
                    done = json.loads(line[6:])
                elif event == "error":
                    raise RuntimeError(line)
    end = time.perf_counter()
    assert first is not None, "no content"
    return {"first": (first - start) * 1000, "end": (end - start) * 1000,
            "ttft": float(done["timings"]["ttft_ms"] or 0),
            "cpu": (server.cpu_s() - cpu) * 1000}


def stats(values: list[float]) -> str:
    values = sorted(values)
    return f"{statistics.median(values):.2f} / {values[int(0.9 * (len(values) - 1))]:.2f}"


def row(label: str, rows: list[dict[str, float]]) -> str:
    return (f"| {label} | {stats([r['first'] for r in rows])} | "
            f"{stats([r['end'] for r in rows])} | {stats([r['ttft'] for r in rows])} | "
            f"{sum(r['cpu'] for r in rows) / len(rows):.1f} ms |")


def spawn_llm(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", LLM_SERVER, str(port)],
                            stdout=subprocess.PIPE)


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="conversation-bench-"))
    llm_port = free_port()
    llm = spawn_llm(llm_port)
    servers: list[Server] = []
    try:
        assert llm.stdout is not None and llm.stdout.readline().strip() == b"ready"
        cached, uncached = tmp / "cached", tmp / "uncached"
        project(cached, llm_port, 100_000)
        await seed(cached, args.messages)
        shutil.copytree(cached, uncached)
        project(uncached, llm_port, 0)
        on, off = Server(cached, "cache"), Server(uncached, "no cache")
        servers = [on, off]
        await asyncio.gather(*(s.start() for s in servers))
        results: dict[str, list[dict[str, float]]] = {
            k: [] for k in ("long", "long_off", "short", "regenerate", "continue")}
        spy = None
        async with aiohttp.ClientSession() as http:
            for s in servers:  # warm up (LiteLLM import, first reads)
                for i in range(3):
                    await stream(http, s, "/api/chat/stream",
                                 {"message": "hi", "conversation_id": f"warm{i}"})
                    await stream(http, s, "/api/chat/stream",
                                 {"message": "hi", "conversation_id": "long"})
            if args.profile:
                assert on.proc is not None
                spy = await start_profile(on.proc.pid, tmp / "profile.txt")
            for i in range(args.turns):
                body = {"message": f"Turn {i}: how is the harbour?", "conversation_id": "long"}
                pair = [("long", on), ("long_off", off)]
                for key, server in (pair if i % 2 == 0 else pair[::-1]):
                    results[key].append(await stream(http, server, "/api/chat/stream", body))
                results["short"].append(await stream(
                    http, on, "/api/chat/stream",
                    {"message": "How is the harbour?", "conversation_id": f"short{i}"}))
                results["regenerate"].append(await stream(
                    http, on, "/api/conversations/long/regenerate", None))
                results["continue"].append(await stream(
                    http, on, "/api/conversations/long/continue", None))
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has
                await spy.wait()
        print(f"{args.messages} stored messages, {args.turns} turns each; median / p90 in ms\n")
        print("| turn | first content (client) | stream end (client) | engine ttft_ms | "
              "engine CPU per turn |")
        print("| --- | --- | --- | --- | --- |")
        print(row("chat, fresh conversation", results["short"]))
        print(row(f"chat, {args.messages} messages, store cache on", results["long"]))
        print(row(f"chat, {args.messages} messages, store.cache_messages: 0",
                  results["long_off"]))
        print(row("regenerate (cache on)", results["regenerate"]))
        print(row("continue (cache on)", results["continue"]))
        if spy is not None and (tmp / "profile.txt").exists():
            print("\npy-spy, the cached server during the measured turns (leaf frames, "
                  "% of samples):")
            print(top_frames(tmp / "profile.txt", 20))
    finally:
        for s in servers:
            s.stop()
        llm.terminate()
        llm.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="py-spy the cached server")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
