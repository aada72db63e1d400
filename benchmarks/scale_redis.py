"""A chat turn's path to first token with the Redis store, next to SQLite, end to end.

Two real ``companion serve`` processes with the same profile: one on SQLite (the
embedded default), one on a throwaway ``redis-server``; the scripted LLM server in a
third process; the client (this process) alternates turns between them. Each turn
is server-managed (``message`` + ``conversation_id``), so it takes the rate-limit
bucket and a stream slot, reads the shared settings, reads the conversation and
its state and stores the user message before the LLM is called: with Redis each of
those is Redis work (see ``--count`` for how many round trips).

Reported: time to first token as the client sees it (request sent -> first
``content`` event) and the engine's own ``ttft_ms`` (from ``done``), median over
all turns, for both engines and the difference; engine CPU per turn from
``/proc/PID/stat``; and, as a diagnostic, one Redis round trip (``PING``) measured
from this process. Goal: the Redis engine's extra time to first token <= 1 ms.

``--baseline-src PATH`` adds a second pair of engines run from another checkout
(e.g. ``/work/main`` before a change; in that checkout's ``.venv`` when it has one),
all four alternating turn by turn in the same run. ``BENCH_ENGINE_SRC=PATH`` runs the
(first) pair from another checkout.
``--count`` runs a few turns with each Redis engine behind a counting TCP proxy
instead (nothing timed) and prints the Redis commands and round trips per turn, and
how many of them come before the first token. ``--profile DIR`` records each Redis
engine with py-spy during the timed rounds (``benchmarks/pyspy_top.py DIR/FILE``).

    .venv/bin/python benchmarks/scale_redis.py [--turns 200] [--rounds 5]
        [--baseline-src /work/main] [--count] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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


# --- counting Redis traffic -------------------------------------------------------------------


class CountingProxy:
    """A TCP proxy in front of ``redis-server`` that counts what the engine sends.

    Commands are the RESP arrays the client writes (those a Lua script runs inside
    Redis are not sent, so not counted). A round trip is a burst of client writes
    answered by the server: pipelined commands travel together and count once.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.commands = 0
        self.round_trips = 0
        self.names: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def snapshot(self) -> tuple[int, int]:
        return self.commands, self.round_trips

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        waiting = [False]  # a request is out, its answer not yet back

        async def client_to_server() -> None:
            parser = _RespCommands()
            while data := await reader.read(65536):
                if not waiting[0]:
                    self.round_trips += 1
                    waiting[0] = True
                for name in parser.feed(data):
                    self.commands += 1
                    self.names[name] = self.names.get(name, 0) + 1
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def server_to_client() -> None:
            while data := await up_reader.read(65536):
                waiting[0] = False
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(client_to_server(), server_to_client(), return_exceptions=True)


class _RespCommands:
    """Splits a client's RESP stream into commands, yielding each command's name."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        names = []
        while (parsed := self._one()) is not None:
            names.append(parsed)
        return names

    def _one(self) -> str | None:
        buf = self.buf
        end = buf.find(b"\r\n")
        if end < 0 or not buf.startswith(b"*"):
            return None
        count, pos, name = int(buf[1:end]), end + 2, ""
        for i in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            size = int(buf[pos + 1:end])
            if len(buf) < end + 2 + size + 2:
                return None
            if i == 0:
                name = buf[end + 2:end + 2 + size].decode().upper()
            pos = end + 2 + size + 2
        self.buf = buf[pos:]
        return name


# --- the client -------------------------------------------------------------------------------


@dataclass
class Engine:
    name: str
    url: str
    pid: int
    proxy: CountingProxy | None = None
    client: list[float] = field(default_factory=list)
    engine: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


async def turn(http: aiohttp.ClientSession, url: str, conversation: str,
               proxy: CountingProxy | None = None
               ) -> tuple[float, float, tuple[int, int] | None]:
    """(client time to first content event, engine ttft_ms) in ms, and with a proxy the
    (commands, round trips) sent before that first event."""
    before = proxy.snapshot() if proxy else None
    at_first = None
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
                    if proxy and before:
                        now = proxy.snapshot()
                        at_first = (now[0] - before[0], now[1] - before[1])
            elif line.startswith("data: ") and event == "done":
                ttft = json.loads(line[6:])["timings"]["ttft_ms"]
    assert first is not None
    return (first - start) * 1000, ttft, at_first


async def count_round_trips(http: aiohttp.ClientSession, engine: Engine, turns: int = 20
                            ) -> dict[str, float | dict[str, float]]:
    """Redis commands and round trips per turn (a pause after each turn lets the
    engine finish what it does after the stream, e.g. release the stream slot)."""
    proxy = engine.proxy
    assert proxy is not None
    for i in range(4):  # each conversation read once: cached from then on
        await turn(http, engine.url, f"count-{i % 2}")
    await asyncio.sleep(0.2)
    c0, r0 = proxy.snapshot()
    names0 = dict(proxy.names)
    path_commands = path_trips = 0
    for i in range(turns):
        _, _, at_first = await turn(http, engine.url, f"count-{i % 2}", proxy)
        assert at_first is not None
        path_commands += at_first[0]
        path_trips += at_first[1]
        await asyncio.sleep(0.05)
    c1, r1 = proxy.snapshot()
    names = {k: (v - names0.get(k, 0)) / turns for k, v in proxy.names.items()
             if v - names0.get(k, 0)}
    return {"commands": (c1 - c0) / turns, "round_trips": (r1 - r0) / turns,
            "path_commands": path_commands / turns, "path_round_trips": path_trips / turns,
            "names": names}


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


async def measure(engines: list[Engine], turns: int, rounds: int, count: bool
                  ) -> dict[str, dict[str, float | dict[str, float]]]:
    counts = {}
    async with aiohttp.ClientSession() as http:
        if count:
            for engine in engines:
                if engine.proxy is not None:
                    counts[engine.name] = await count_round_trips(http, engine)
            return counts  # the proxy's hop would skew the timings: count only
        for engine in engines:  # warm-up: LiteLLM import, pools, caches
            for i in range(20):
                await turn(http, engine.url, f"warm-{engine.name.replace('@', '-')}-{i % 4}")
        for r in range(rounds):
            cpu0 = {e.name: cpu_seconds(e.pid) for e in engines}
            for i in range(turns):
                for engine in engines:
                    client, ttft, _ = await turn(http, engine.url, f"r{r}-{i % 10}")
                    engine.client.append(client)
                    engine.engine.append(ttft)
            for engine in engines:
                engine.cpu.append((cpu_seconds(engine.pid) - cpu0[engine.name]) / turns * 1000)
    return counts


def start_pyspy(pid: int, path: Path) -> subprocess.Popen[bytes]:
    local = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [str(local) if local.exists() else "py-spy", "record", "--threads",
         "--full-filenames", "--nonblocking", "-r", "250", "-p", str(pid), "--format", "raw",
         "-o", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def report(engines: list[Engine], args: argparse.Namespace) -> None:
    med = {e.name: {"client": statistics.median(e.client), "engine": statistics.median(e.engine),
                    "cpu": statistics.median(e.cpu)} for e in engines}
    n = args.turns * args.rounds
    print(f"{n} server-managed turns per engine, alternating, {args.rounds} rounds "
          f"(median over all turns; CPU: median of the rounds' per-turn means)")
    print(f"{'engine':<14} {'client ttft ms':>15} {'p90':>8} {'engine ttft ms':>15} "
          f"{'engine CPU ms/turn':>19}")
    for e in engines:
        p90 = statistics.quantiles(e.client, n=10)[-1]
        m = med[e.name]
        print(f"{e.name:<14} {m['client']:>15.2f} {p90:>8.2f} {m['engine']:>15.2f} "
              f"{m['cpu']:>19.2f}")
    for suffix in ("", "@base"):
        r, s = med.get("redis" + suffix), med.get("sqlite" + suffix)
        if r is None or s is None:
            continue
        print(f"redis{suffix} - sqlite{suffix}: client ttft {r['client'] - s['client']:+.2f} ms,"
              f" engine ttft {r['engine'] - s['engine']:+.2f} ms, "
              f"CPU {r['cpu'] - s['cpu']:+.2f} ms/turn (goal: client ttft <= 1 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=200, help="turns per engine per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="another checkout whose engines run alongside (e.g. /work/main)")
    parser.add_argument("--count", action="store_true",
                        help="count Redis commands and round trips per turn (no timing)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy record each Redis engine into this folder")
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("skipped: redis-server is not installed (apt-get install redis-server)")
        return
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COMPANION_LOAD_PLUGINS": ""}
    # (name suffix, checkout on PYTHONPATH, interpreter): another checkout's engines run
    # in its own .venv when it has one (its dependencies, not ours).
    sources: list[tuple[str, str | None, str]] = [
        ("", env.pop("BENCH_ENGINE_SRC", None), sys.executable)]
    if args.baseline_src is not None:
        src = args.baseline_src.resolve()
        venv = src / ".venv" / "bin" / "python"
        sources.append(("@base", str(src), str(venv) if venv.exists() else sys.executable))
    procs: list[subprocess.Popen[bytes]] = []
    spies: list[subprocess.Popen[bytes]] = []
    engines: list[Engine] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        loop = asyncio.new_event_loop()
        try:
            llm_port, redis_port = free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, "-c", LLM_SERVER, str(llm_port)],
                                          env=env))
            procs.append(subprocess.Popen(
                [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL))
            wait_port(llm_port, procs[0])
            wait_port(redis_port, procs[1])
            for db, (suffix, src, python) in enumerate(sources):
                engine_env = {**env, "PYTHONPATH": src} if src else env
                for kind in ("sqlite", "redis"):
                    name = kind + suffix
                    proxy = None
                    if kind == "sqlite":
                        store = "sqlite:///data/companion.db"
                    else:  # each Redis engine its own database: no shared conversations
                        store = f"redis://127.0.0.1:{redis_port}/{db}"
                        if args.count:
                            proxy = CountingProxy(redis_port)
                            proxy_port = loop.run_until_complete(proxy.start())
                            store = f"redis://127.0.0.1:{proxy_port}/{db}"
                    port = free_port()
                    config = project(base / name, llm_port, store)
                    proc = subprocess.Popen(
                        [python, "-m", "companion_engine", "serve", "--config",
                         str(config), "--port", str(port)], env=engine_env, cwd=base / name)
                    procs.append(proc)
                    while True:  # the proxy runs on this loop: let it serve while we wait
                        try:
                            wait_port(port, proc, timeout=0.2)
                            break
                        except RuntimeError:
                            if proc.poll() is not None:
                                raise
                            loop.run_until_complete(asyncio.sleep(0.2))
                    engines.append(Engine(name, f"http://127.0.0.1:{port}", proc.pid, proxy))
            ping = loop.run_until_complete(redis_ping_ms(redis_port))
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                spies = [start_pyspy(e.pid, args.profile / f"{e.name}.txt")
                         for e in engines if e.name.startswith("redis")]
            counts = loop.run_until_complete(measure(engines, args.turns, args.rounds,
                                                     args.count))
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            for e in engines:
                if e.proxy is not None:
                    loop.run_until_complete(e.proxy.close())
            loop.close()
    if not args.count:
        report(engines, args)
    print(f"diagnostic: one Redis round trip (PING from the client process): {ping:.3f} ms")
    for name, c in counts.items():
        names = ", ".join(f"{k} {v:g}" for k, v in sorted(c["names"].items()))  # type: ignore[union-attr]
        print(f"{name}: per turn {c['round_trips']:g} Redis round trips ({c['commands']:g} "
              f"commands), {c['path_round_trips']:g} of them ({c['path_commands']:g} commands) "
              f"before the first token; commands: {names}")
    if args.profile is not None:
        for e in engines:
            if e.name.startswith("redis"):
                print(f"profile: .venv/bin/python benchmarks/pyspy_top.py "
                      f"{args.profile / (e.name + '.txt')}")


if __name__ == "__main__":
    main()
