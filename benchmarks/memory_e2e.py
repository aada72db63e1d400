"""Memory end to end: what recall adds to the first token, and that the summary never
delays ``done``.

Three kinds of process: two ``companion serve`` servers (the same project, each with its
own copy of a database holding 10,000 stored messages of one character: one profile
with ``memory``, one without), the scripted LLM server in a process of its own, and this
client. Requests alternate between the two servers, so both see the same machine noise.

- ``recall``: a new conversation per turn whose message shares words with the stored
  ones (FTS5 recall over 10,000 messages); memory's summary off. Reported: the client's
  time to the first ``content`` event and to ``done`` (median, p90), the engine's own
  ``ttft_ms``, and the engine process's CPU time per turn (from ``/proc``).
- ``summary``: one conversation whose history overflows on every turn, so every turn
  queues a summary; the scripted model takes ``--summary-delay`` seconds to write it.
  Reported: the client's time to ``done``, with the summary on and off.

    python benchmarks/memory_e2e.py [--turns 40] [--messages 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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

from companion_engine.store import StoredMessage, open_store
from companion_engine.testing import free_port

WORDS = ("harbour lighthouse dragon forest river castle garden winter summer lantern sailor "
         "market violin letter bridge mountain orchard storm candle library festival island "
         "mirror comet meadow train bakery painter journey promise secret birthday sister "
         "brother teacher village kitten puppy coffee tea poem song dance ocean desert snow "
         "moon star cloud rain thunder wind fire stone glass silver golden").split()
LLM_SERVER = """
import asyncio, sys
from companion_engine.testing import LLMTestServer, Script

class Server(LLMTestServer):
    async def _record(self, request):
        rec, script = await super()._record(request)
        messages = rec.body.get("messages") or [{}]
        if str(messages[0].get("content", "")).startswith("You keep the memory"):
            script = Script(tokens=["A", " summary", "."], first_delay_s=float(sys.argv[2]))
        return rec, script

async def main():
    server = await Server.start(int(sys.argv[1]))
    server.default = Script(tokens=["Hello", " there", ",", " friend", "."])
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


SYLLABLES = "ka lo mi su ter van bel dor fin gal hu ri no pe sa ti".split()
#: A vocabulary with a long tail, as chat has: 60 common words and 4,000 rarer ones,
#: drawn with Zipf-like weights.
VOCABULARY = [*WORDS, *("".join(random.Random(i).choice(SYLLABLES) for _ in range(3))
                        + str(i % 7) for i in range(4000))]
WEIGHTS = [1 / (rank + 1) for rank in range(len(VOCABULARY))]


def sentence(rng: random.Random) -> str:
    words = rng.choices(VOCABULARY, WEIGHTS, k=rng.randint(6, 14))
    return " ".join(words).capitalize() + "."


async def seed(db_dir: Path, messages: int) -> None:
    store = await open_store("sqlite:///data/companion.db", db_dir)
    rng = random.Random(7)
    per = 50
    for c in range(messages // per):
        batch = [StoredMessage("user" if i % 2 == 0 else "assistant", sentence(rng),
                               created_at=time.time() - 86400 * 30 + c * 60 + i)
                 for i in range(per)]
        await store.append_messages(f"old{c}", batch, character_id="nova")
    await store.close()


def project(root: Path, llm_port: int, history_tokens: int, summary_batch: int) -> None:
    (root / "profiles").mkdir(parents=True)
    (root / "characters").mkdir()
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Nova", "description": "Nova is a friendly companion.", "personality": "warm",
        "scenario": "", "first_mes": "", "mes_example": ""}}
    (root / "characters" / "nova.json").write_text(json.dumps(card))
    llm = {"model": "openai/test-model", "api_base": f"http://127.0.0.1:{llm_port}/v1",
           "timeout_s": 30}
    base = ["system_prompt", "first_message", "character_definition",
            {"history": {"max_tokens": history_tokens}}]
    profiles = {
        "off": base,
        "recall": [*base, {"memory": {"summary": False}}],
        # delay_s 0: the summary starts right after each turn, during the next one (the
        # worst case; the default waits for a quiet moment)
        "summary": [*base, {"memory": {"recall": False, "summary": {"batch": summary_batch,
                                                                    "delay_s": 0}}}],
    }
    for name, prompt in profiles.items():
        (root / "profiles" / f"{name}.yaml").write_text(yaml.safe_dump({
            "llm": llm, "character": "nova", "prompt": prompt, "output": [],
            "speech": {"enabled": False, "tts": "none"}}))
    (root / "companion.yaml").write_text(yaml.safe_dump({
        "reload": False, "logging": {"level": "WARNING"},
        "rate_limit": {"requests": 100000, "window_s": 1}}))


class Server:
    def __init__(self, root: Path, profile: str) -> None:
        self.root, self.profile, self.port = root, profile, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "companion_engine", "serve", "--config",
             str(self.root / "companion.yaml"), "--port", str(self.port), "--profile",
             self.profile, "--no-reload"],
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
        raise RuntimeError(f"server {self.profile} did not start")

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


async def turn(http: aiohttp.ClientSession, server: Server, body: dict[str, Any]
               ) -> dict[str, float]:
    start = time.perf_counter()
    first = None
    done: dict[str, Any] = {}
    async with http.post(f"http://127.0.0.1:{server.port}/api/chat/stream",
                         json={**body, "enable_tts": False}) as resp:
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
    return {"first": (first - start) * 1000, "done": (end - start) * 1000,
            "engine_ttft": float(done["timings"]["ttft_ms"] or 0)}


def stats(values: list[float]) -> str:
    values = sorted(values)
    return f"{statistics.median(values):.2f} / {values[int(0.9 * (len(values) - 1))]:.2f}"


def spawn_llm(port: int, summary_delay: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", LLM_SERVER, str(port), str(summary_delay)],
                            stdout=subprocess.PIPE)


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    llm_port = free_port()
    llm = spawn_llm(llm_port, args.summary_delay)
    servers: list[Server] = []
    try:
        assert llm.stdout is not None and llm.stdout.readline().strip() == b"ready"
        roots = {}
        for name in ("off", "recall", "summary"):
            roots[name] = tmp / name
            project(roots[name], llm_port, history_tokens=3000 if name != "summary" else 60,
                    summary_batch=1)
        await seed(roots["off"], args.messages)
        for name in ("recall", "summary"):
            shutil.copytree(roots["off"] / "data", roots[name] / "data")
        # summary's baseline: the same small history, memory off
        off_small = tmp / "off_small"
        project(off_small, llm_port, history_tokens=60, summary_batch=1)
        shutil.copytree(roots["off"] / "data", off_small / "data")
        a, b = Server(roots["recall"], "recall"), Server(roots["off"], "off")
        s_on, s_off = Server(roots["summary"], "summary"), Server(off_small, "off")
        servers = [a, b, s_on, s_off]
        await asyncio.gather(*(s.start() for s in servers))
        rng = random.Random(11)
        async with aiohttp.ClientSession() as http:
            # warm up: first turns import LiteLLM, build the FTS index, ...
            for s in servers:
                for i in range(3):
                    await turn(http, s, {"message": sentence(rng), "conversation_id": f"w{i}"})
            results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
            cpu = {"on": 0.0, "off": 0.0}
            for i in range(args.turns):
                body = {"message": sentence(rng), "conversation_id": f"new{i}"}
                pair = [("on", a), ("off", b)] if i % 2 == 0 else [("off", b), ("on", a)]
                for key, server in pair:
                    before = server.cpu_s()
                    results[key].append(await turn(http, server, body))
                    cpu[key] += server.cpu_s() - before
            print(f"recall: {args.messages} stored messages, {args.turns} turns each, "
                  f"alternating; median / p90 in ms\n")
            print("| memory | first content (client) | done (client) | engine ttft_ms | "
                  "engine CPU per turn |")
            print("| --- | --- | --- | --- | --- |")
            for key in ("off", "on"):
                rows = results[key]
                print(f"| {'recall' if key == 'on' else 'off'} | "
                      f"{stats([r['first'] for r in rows])} | "
                      f"{stats([r['done'] for r in rows])} | "
                      f"{stats([r['engine_ttft'] for r in rows])} | "
                      f"{cpu[key] / args.turns * 1000:.2f} ms |")
            delta = (statistics.median(r["first"] for r in results["on"])
                     - statistics.median(r["first"] for r in results["off"]))
            print(f"\nrecall adds {delta:.2f} ms to the first content (median difference)")

            summary_rows: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
            for _ in range(args.summary_turns):
                for key, server in (("on", s_on), ("off", s_off)):
                    body = {"message": sentence(rng), "conversation_id": "long"}
                    summary_rows[key].append(await turn(http, server, body))
            print(f"\nsummary: {args.summary_turns} turns of one overflowing conversation; "
                  f"the model takes {args.summary_delay:g} s per summary\n")
            print("| memory | first content (client) | done (client) |")
            print("| --- | --- | --- |")
            for key in ("off", "on"):
                rows = summary_rows[key]
                print(f"| {'summary' if key == 'on' else 'off'} | "
                      f"{stats([r['first'] for r in rows])} | "
                      f"{stats([r['done'] for r in rows])} |")
    finally:
        for s in servers:
            s.stop()
        llm.terminate()
        llm.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--summary-turns", type=int, default=10)
    parser.add_argument("--summary-delay", type=float, default=2.0)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
