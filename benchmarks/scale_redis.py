"""A chat turn's path to first token with the Redis store, next to SQLite, end to end.

Two real ``companion serve`` processes with the same profile: one on SQLite (the
embedded default), one on a throwaway ``redis-server``; the scripted LLM server in a
third process; the client (this process) alternates turns between them. Each turn
is server-managed (``message`` + ``conversation_id``), so it takes the rate-limit
bucket and a stream slot, reads the shared settings, reads the conversation and
stores the user message before the LLM is called: with Redis each of those is a
round trip (the Lua scripts, one ``HMGET``, the conversation read and the append).

Reported: time to first token as the client sees it (request sent -> first
``content`` event) and the engine's own ``ttft_ms`` (from ``done``), median over
all turns, for both engines and the difference; engine CPU per turn from
``/proc/PID/stat``; and, as a diagnostic, one Redis round trip (``PING``) measured
from this process. Goal: the Redis engine's extra time to first token <= 1 ms.

    .venv/bin/python benchmarks/scale_redis.py [--turns 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

LLM_SERVER = """
import asyncio, sys
from companion_engine.testing import LLMTestServer, Script
async def main():
    server = await LLMTestServer.start(int(sys.argv[1]))
    server.default = Script(tokens=["Hello", " there", ",", " friend", "."])
    await asyncio.Event().wait()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def project(root: Path, llm_port: int, store: str) -> Path:
    (root / "profiles").mkdir(parents=True)
    for sub in ("characters", "plugins", "data"):
        (root / sub).mkdir()
    (root / "profiles" / "default.yaml").write_text(json.dumps({
        "llm": {"model": "openai/test-model", "api_base": f"http://127.0.0.1:{llm_port}/v1",
                "timeout_s": 10},
        "speech": {"enabled": False}}))
    (root / "companion.yaml").write_text(json.dumps({
        "reload": False, "store": {"url": store},
        "rate_limit": {"requests": 100_000, "window_s": 60}, "logging": {"level": "WARNING"}}))
    return root / "companion.yaml"


async def turn(http: aiohttp.ClientSession, url: str, conversation: str) -> tuple[float, float]:
    """(client time to first content event, engine ttft_ms) in ms."""
    start = time.perf_counter()
    first = None
    ttft = float("nan")
    async with http.post(url + "/api/chat/stream",
                         json={"message": "hi", "conversation_id": conversation}) as resp:
        assert resp.status == 200, resp.status
        event = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
                if event == "content" and first is None:
                    first = time.perf_counter()
            elif line.startswith("data: ") and event == "done":
                ttft = json.loads(line[6:])["timings"]["ttft_ms"]
    assert first is not None
    return (first - start) * 1000, ttft


async def redis_ping_ms(port: int, n: int = 500) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=port)
    await client.ping()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await client.ping()
        times.append((time.perf_counter() - t) * 1000)
    await client.aclose()
    return statistics.median(times)


async def measure(engines: dict[str, tuple[str, int]], turns: int, rounds: int
                  ) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {
        name: {"client": [], "engine": [], "cpu": []} for name in engines}
    async with aiohttp.ClientSession() as http:
        for name, (url, _) in engines.items():  # warm-up: LiteLLM import, pools, caches
            for i in range(20):
                await turn(http, url, f"warm-{name}-{i % 4}")
        for r in range(rounds):
            cpu0 = {n: cpu_seconds(pid) for n, (_, pid) in engines.items()}
            for i in range(turns):
                for name, (url, _) in engines.items():
                    client, engine = await turn(http, url, f"r{r}-{i % 10}")
                    out[name]["client"].append(client)
                    out[name]["engine"].append(engine)
            for name, (_, pid) in engines.items():
                out[name]["cpu"].append((cpu_seconds(pid) - cpu0[name]) / turns * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=200, help="turns per engine per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("skipped: redis-server is not installed (apt-get install redis-server)")
        return
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COMPANION_LOAD_PLUGINS": ""}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        try:
            llm_port, redis_port = free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, "-c", LLM_SERVER, str(llm_port)],
                                          env=env))
            procs.append(subprocess.Popen(
                [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL))
            wait_port(llm_port, procs[0])
            wait_port(redis_port, procs[1])
            engines: dict[str, tuple[str, int]] = {}
            for name, store in (("sqlite", "sqlite:///data/companion.db"),
                                ("redis", f"redis://127.0.0.1:{redis_port}/0")):
                port = free_port()
                config = project(base / name, llm_port, store)
                proc = subprocess.Popen(
                    [sys.executable, "-m", "companion_engine", "serve", "--config", str(config),
                     "--port", str(port)], env=env, cwd=base / name)
                procs.append(proc)
                wait_port(port, proc)
                engines[name] = (f"http://127.0.0.1:{port}", proc.pid)
            ping = asyncio.run(redis_ping_ms(redis_port))
            results = asyncio.run(measure(engines, args.turns, args.rounds))
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    n = args.turns * args.rounds
    print(f"{n} server-managed turns per engine, alternating, {args.rounds} rounds "
          f"(median over all turns; CPU: median of the rounds' per-turn means)")
    print(f"{'store':<8} {'client ttft ms':>15} {'p90':>8} {'engine ttft ms':>15} "
          f"{'engine CPU ms/turn':>19}")
    for name, r in results.items():
        p90 = statistics.quantiles(r["client"], n=10)[-1]
        print(f"{name:<8} {med[name]['client']:>15.2f} {p90:>8.2f} "
              f"{med[name]['engine']:>15.2f} {med[name]['cpu']:>19.2f}")
    r, s = med["redis"], med["sqlite"]
    print(f"redis - sqlite: client ttft {r['client'] - s['client']:+.2f} ms, "
          f"engine ttft {r['engine'] - s['engine']:+.2f} ms, "
          f"CPU {r['cpu'] - s['cpu']:+.2f} ms/turn (goal: <= 1 ms)")
    print(f"diagnostic: one Redis round trip (PING from the client process): {ping:.3f} ms")


if __name__ == "__main__":
    main()
