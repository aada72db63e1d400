"""What the end-to-end benchmarks share: three processes, a streaming client, statistics.

Every end-to-end benchmark runs as users see the engine:

- the scripted LLM server (``companion_engine.testing.llmserver``) in its own process,
  driven through its ``/_scripted/`` control API (``LLMServerProcess``);
- a real ``companion serve`` in its own process, on a throwaway project folder
  (``EngineProcess``), whose CPU time and RSS are read from outside (psutil);
- the client: the benchmark script itself (``stream_chat`` reads an SSE stream and
  timestamps each event on arrival).

Baselines run in the same script and the same run, so machine noise hits both.
Times come from ``time.perf_counter()``, which is ``CLOCK_MONOTONIC`` on Linux: the
same clock in every process, so send times recorded by the LLM server and arrival
times seen by the client can be compared directly.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The plain LiteLLM loop runs in the client process: keep LiteLLM offline there too.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import aiohttp
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
#: Settings every benchmark's companion.yaml starts from: no reload watcher, and limits
#: far above what the benchmark sends (they would otherwise refuse the load).
BENCH_CONFIG: dict[str, Any] = {
    "reload": False,
    "rate_limit": {"requests": 100_000, "window_s": 1},
    "server": {"max_streams_per_ip": 10_000},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "COMPANION_LOAD_PLUGINS": "", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "PYTHONUNBUFFERED": "1", **extra}
    env.pop("OLLAMA_API_BASE", None)
    env.pop("BENCH_ENGINE_SRC", None)
    return env


# --- statistics -------------------------------------------------------------------------------


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def percentile(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty sequence."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process has run, summed over its live threads.

    Linux: ``/proc/PID/task/*/schedstat`` (nanoseconds; ``/proc/PID/stat`` counts in
    10 ms ticks, too coarse for one turn). Elsewhere: psutil's user + system time.
    """
    try:
        total = 0
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                with open(f"{task.path}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that just ended
        return total / 1e9
    except FileNotFoundError:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return t.user + t.system


# --- the scripted LLM server ------------------------------------------------------------------


class LLMServerProcess:
    """``python -m companion_engine.testing.llmserver`` in a child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "companion_engine.testing.llmserver", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env(), text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"the scripted LLM server did not start: {line!r}")
        self.url = line.removeprefix("listening on ")
        self.pid = self.proc.pid

    @property
    def openai_base(self) -> str:
        return f"{self.url}/v1"

    @property
    def ollama_base(self) -> str:
        return self.url

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as s, s.request(
                method, f"{self.url}/_scripted/{path}", json=body) as r:
            r.raise_for_status()
            return await r.json()

    async def push(self, *scripts: dict[str, Any]) -> None:
        await self._call("POST", "push", {"scripts": list(scripts)})

    async def set_default(self, script: dict[str, Any]) -> None:
        await self._call("PUT", "default", script)

    async def requests(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "requests?body=0"))["requests"]

    async def clear(self) -> None:
        await self._call("DELETE", "requests")

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --- the engine -------------------------------------------------------------------------------


def llm_settings(llm: LLMServerProcess, *, ollama: bool = False, native: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    """A profile's ``llm:`` block pointing at the scripted server."""
    if ollama:
        out: dict[str, Any] = {"model": "ollama_chat/test-model", "api_base": llm.ollama_base}
    else:
        out = {"model": "openai/test-model", "api_base": llm.openai_base}
    out.update({"max_tokens": 4096, "timeout_s": 120, **extra})
    if native is not None:
        if os.environ.get("BENCH_ENGINE_SRC") and not _src_has("llm.native"):
            if native != "off":
                raise SystemExit("the engine in BENCH_ENGINE_SRC has no native LLM client")
            return out  # an engine from before llm.native: LiteLLM is all it has
        out["native"] = native
    return out


def _src_has(feature: str) -> bool:
    """Whether the engine checkout in ``BENCH_ENGINE_SRC`` has a config key."""
    config = Path(os.environ["BENCH_ENGINE_SRC"]) / "companion_engine" / "config.py"
    key = feature.rsplit(".", 1)[-1]
    return f"    {key}:" in config.read_text()


class EngineProcess:
    """A real ``companion serve`` on a throwaway project folder, watched from outside."""

    def __init__(self, profile: dict[str, Any], *, config: dict[str, Any] | None = None,
                 characters: dict[str, dict[str, Any]] | None = None,
                 root: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="companion-bench-"))
        (self.root / "profiles").mkdir(parents=True, exist_ok=True)
        for sub in ("characters", "plugins", "data"):
            (self.root / sub).mkdir(exist_ok=True)
        (self.root / "profiles" / "default.yaml").write_text(yaml.safe_dump(profile))
        merged = {**BENCH_CONFIG, **(config or {})}
        (self.root / "companion.yaml").write_text(yaml.safe_dump(merged))
        for card_id, card in (characters or {}).items():
            (self.root / "characters" / f"{card_id}.json").write_text(json.dumps(card))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = child_env(**(env or {}))
        if os.environ.get("BENCH_ENGINE_SRC"):
            # Measure another checkout's engine (e.g. main before a change) with this
            # harness: its package folder goes first on the engine's sys.path.
            self.env["PYTHONPATH"] = os.environ["BENCH_ENGINE_SRC"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.healthy_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        log = (self.root / "serve.log").open("ab")
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "companion_engine", "serve", "--port", str(self.port), "--no-reload"],
            cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    async def wait_healthy(self, within_s: float = 60.0) -> float:
        """Poll ``/health`` until it answers 200; return seconds since spawn."""
        deadline = time.perf_counter() + within_s
        async with aiohttp.ClientSession() as s:
            while True:
                try:
                    async with s.get(f"{self.url}/health",
                                     timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            self.healthy_at = time.perf_counter()
                            return self.healthy_at - self.spawned_at
                except (aiohttp.ClientError, TimeoutError):
                    pass
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"companion serve exited ({self.proc.returncode}); "
                                       f"see {self.root / 'serve.log'}:\n{self.log_tail()}")
                if time.perf_counter() > deadline:
                    raise RuntimeError("companion serve did not become healthy")
                await asyncio.sleep(0.005)

    async def start(self, workers: int = 1) -> EngineProcess:
        """Spawn and wait until ``/health`` answers (from ``workers`` distinct workers)."""
        self.spawn()
        await self.wait_healthy()
        if workers > 1:
            seen: set[object] = set()
            deadline = time.perf_counter() + 60
            async with aiohttp.ClientSession() as s:
                while len(seen) < workers and time.perf_counter() < deadline:
                    # a new connection each time: the kernel picks a worker per connection
                    async with s.get(f"{self.url}/health",
                                     headers={"Connection": "close"}) as r:
                        seen.add((await r.json()).get("worker", {}).get("id"))
                    await asyncio.sleep(0.02)
            if len(seen) < workers:
                raise RuntimeError(f"only workers {seen} answered /health")
        return self

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "serve.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) \
            if path.exists() else ""

    def pids(self) -> list[int]:
        """The engine process and its children (``server.workers``: the workers)."""
        try:
            proc = psutil.Process(self.pid)
            return [self.pid, *(c.pid for c in proc.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        """CPU seconds of the engine's processes, all their threads (``process_cpu_s``)."""
        return sum(process_cpu_s(pid) for pid in self.pids())

    def rss_mb(self) -> float:
        """Resident memory of the engine's processes (the workers' summed)."""
        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 1e6

    async def cpu_after_settle(self, quiet_s: float = 0.1, max_s: float = 3.0) -> float:
        """CPU seconds once the process has gone quiet (background work after a turn)."""
        last = self.cpu_s()
        deadline = time.perf_counter() + max_s
        while time.perf_counter() < deadline:
            await asyncio.sleep(quiet_s)
            now = self.cpu_s()
            if now - last < 0.0005:
                return now
            last = now
        return last

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the client -------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """One SSE turn as the client saw it."""

    status: int = 0
    started: float = 0.0
    first_byte: float | None = None
    ended: float = 0.0
    #: Arrival time of each ``content`` event with non-empty ``content``.
    content_at: list[float] = field(default_factory=list)
    events: int = 0
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    body: bytes = b""

    @property
    def wall(self) -> float:
        return self.ended - self.started


async def stream_chat(session: aiohttp.ClientSession, url: str, body: dict[str, Any], *,
                      keep_body: bool = False) -> StreamResult:
    """POST ``/api/chat/stream`` and read it to the end, timestamping events on arrival.

    Only what is needed is parsed (the event name, empty-content check, the final
    ``done``/``error`` JSON), so the client's own cost stays small next to the engine's.
    """
    out = StreamResult(started=time.perf_counter())
    async with session.post(f"{url}/api/chat/stream", json=body) as resp:
        out.status = resp.status
        if resp.status != 200:
            out.body = await resp.read()
            out.ended = time.perf_counter()
            return out
        buf = b""
        kept: list[bytes] = []
        async for piece in resp.content.iter_any():
            now = time.perf_counter()
            if out.first_byte is None:
                out.first_byte = now
            if keep_body:
                kept.append(piece)
            buf += piece
            *blocks, buf = buf.split(b"\n\n")
            for block in blocks:
                if block.startswith(b"event: content\n"):
                    out.events += 1
                    if b'"content":""' not in block:
                        out.content_at.append(now)
                elif block.startswith(b"event: done\n"):
                    out.events += 1
                    out.done = json.loads(block.split(b"\ndata: ", 1)[1])
                elif block.startswith(b"event: error\n"):
                    out.events += 1
                    out.error = json.loads(block.split(b"\ndata: ", 1)[1])
                elif block.startswith(b"event: "):
                    out.events += 1
        out.body = b"".join(kept)
    out.ended = time.perf_counter()
    return out


async def stream_openai(session: aiohttp.ClientSession, url: str, body: dict[str, Any]
                        ) -> StreamResult:
    """POST ``/v1/chat/completions`` (``stream: true``) and read it to ``data: [DONE]``.

    The same bookkeeping as ``stream_chat``, for OpenAI's ``chat.completion.chunk``
    lines: arrival times while reading (a content chunk is one with a non-empty
    ``delta.content``), the JSON parsed only after the stream has ended so the
    client's cost during it stays as small as ``stream_chat``'s. ``done`` is built
    from the chunks: ``full_content`` (the deltas joined), ``finish_reason``,
    ``usage`` (with ``stream_options.include_usage``) and ``chunks``.
    """
    out = StreamResult(started=time.perf_counter())
    async with session.post(f"{url}/v1/chat/completions",
                            json={**body, "stream": True}) as resp:
        out.status = resp.status
        if resp.status != 200:
            out.body = await resp.read()
            out.ended = time.perf_counter()
            return out
        buf = b""
        blocks: list[bytes] = []
        finished = False
        async for piece in resp.content.iter_any():
            now = time.perf_counter()
            if out.first_byte is None:
                out.first_byte = now
            buf += piece
            *ready, buf = buf.split(b"\n\n")
            for block in ready:
                if block == b"data: [DONE]":
                    finished = True
                    continue
                out.events += 1
                blocks.append(block)
                if b'"delta":{"content":"' in block and b'"content":""' not in block:
                    out.content_at.append(now)
    out.ended = time.perf_counter()
    content: list[str] = []
    reason = usage = None
    for block in blocks:
        if not block.startswith(b"data: "):
            continue
        chunk = json.loads(block[6:])
        if "error" in chunk:
            out.error = chunk["error"]
            continue
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            content.append(choice.get("delta", {}).get("content") or "")
            reason = choice.get("finish_reason") or reason
    if finished and out.error is None:
        out.done = {"full_content": "".join(content), "finish_reason": reason,
                    "usage": usage, "chunks": len(blocks)}
    return out


def session(limit: int = 0) -> aiohttp.ClientSession:
    """A client session without a connection cap (aiohttp's default is 100)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=300))


async def plain_litellm_turn(llm: LLMServerProcess, tokens: list[str], *,
                             ollama: bool = False) -> tuple[float, float]:
    """The baseline: a plain ``litellm.acompletion(stream=True)`` loop against the same
    server, in this (client) process. Returns (wall seconds, CPU seconds of this process,
    LiteLLM's background work after the stream included)."""
    import litellm

    litellm.suppress_debug_info = True
    await llm.push({"tokens": tokens})
    model, base = (("ollama_chat/test-model", llm.ollama_base) if ollama
                   else ("openai/test-model", llm.openai_base))
    cpu0 = process_cpu_s(os.getpid())
    started = time.perf_counter()
    resp = await litellm.acompletion(
        model=model, api_base=base, api_key="not-needed", stream=True,
        messages=[{"role": "user", "content": "go"}], max_retries=0, num_retries=0,
        stream_options={"include_usage": True})
    got = 0
    async for chunk in resp:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
    wall = time.perf_counter() - started
    assert got == len(tokens), (got, len(tokens))
    await settle_litellm()
    return wall, process_cpu_s(os.getpid()) - cpu0


async def settle_litellm(quiet_s: float = 0.1, max_s: float = 3.0) -> None:
    """Let LiteLLM's background logging of the last stream finish (tasks and threads)."""
    me = asyncio.current_task()
    for _ in range(50):
        busy = [t for t in asyncio.all_tasks() if t is not me and not t.done()
                and "litellm" in repr(t.get_coro())]
        if not busy:
            break
        await asyncio.gather(*busy, return_exceptions=True)
    last = time.process_time()
    deadline = time.perf_counter() + max_s
    while time.perf_counter() < deadline:
        await asyncio.sleep(quiet_s)
        now = time.process_time()
        if now - last < 0.0005:
            return
        last = now


def words(n: int, vocabulary: Sequence[str] | None = None) -> list[str]:
    """``n`` LLM-like tokens: words with leading spaces and a full stop now and then."""
    vocab = vocabulary or ["The", " quick", " brown", " fox", " jumps", " over", " the",
                           " lazy", " dog", " while", " it's", " raining", " hard", "."]
    return [vocab[i % len(vocab)] for i in range(n)]


def print_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A markdown table (pasted into docs/benchmarks.md as is)."""
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


# --- profiling --------------------------------------------------------------------------------


class PySpy:
    """``py-spy record --threads --full-filenames -p PID`` while a benchmark runs.

    Writes folded stacks (``--format raw``) to ``path``; ``benchmarks/pyspy_top.py PATH``
    prints the top lines. Idle threads are not sampled (py-spy's default), so the
    shares are of the time the process was busy.
    """

    def __init__(self, pid: int, path: Path, rate: int = 250) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["py-spy" if not (Path(PYTHON).parent / "py-spy").exists()
             else str(Path(PYTHON).parent / "py-spy"), "record", "--threads",
             "--full-filenames", "--nonblocking", "-r", str(rate), "-p", str(pid),
             "--format", "raw", "-o", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
