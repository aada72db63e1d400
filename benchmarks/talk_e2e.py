"""Talking over /api/ws, end to end: end of speech to first audio, barge-in, VAD's CPU.

Three processes: a real ``companion serve`` (Silero VAD, the ``openai`` STT backend, the
embedded espeak voice), the scripted LLM + speech-to-text server (this file run with
``--servers``: 30 tokens/s, transcriptions answered at once), and this client, which speaks
real espeak-ng recordings into the WebSocket in real time (20 ms frames) and timestamps
every message as it arrives.

- **end of speech -> first audio byte**: from the end of the spoken audio (the frame holding
  its last voiced sample) to the first binary audio frame. It is split into the pause the
  detector waits for (``min_silence_ms``, reported by the ``vad speech_end`` message), the
  LLM's own time to the first fragment (its tokens at ``--rate``), and the rest: STT,
  prompt, TTS and the engine (goal: <= 250 ms). Baselines in the same run: the same turn
  typed over the WebSocket (text -> first audio) and over SSE (``/api/chat/stream``).
- **barge-in -> last audio frame**: while the companion speaks a long reply, the client
  starts talking; from the first frame holding the user's voice to the last audio frame
  that arrives (goal: <= 100 ms), to ``interrupted``, and to the LLM stream being closed
  (seen by the LLM server).
- **VAD CPU per live session**: engine CPU time (``/proc/PID/stat``) while ``--sessions``
  sessions stream speech and silence in real time, minus the same sessions open and quiet,
  per session and second (goal: < 2 % of one core). This engine has ``speech.stt: none``,
  so the utterances start no turns: what is measured is receiving the frames, the
  detector and its events.

    python benchmarks/talk_e2e.py [--runs 7] [--rate 30] [--sessions 4] [--seconds 10]
        [--vad-runs 3] [--parts latency,vad] [--profile DIR]

The VAD measurement is taken ``--vad-runs`` times (idle, silence, speech each time) and the
medians printed. ``BENCH_ENGINE_SRC=/path/to/checkout`` runs the engine from another checkout
(e.g. ``main`` before a change) under this client; ``--profile DIR`` records the VAD engine
with py-spy while the sessions stream (``DIR/talk-vad.txt``; read it with
``benchmarks/pyspy_top.py``; profiling costs the engine CPU, so take CPU figures without it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REPLY = ("Hello there, my friend, it is so good to hear your voice again today. I was just "
         "thinking about the garden we planted last spring. Shall we go and see how the roses "
         "are doing?")
LONG = " ".join([REPLY] * 4)
QUESTION = "How are you doing today?"
STOP = "Wait, wait, stop please."


def tokens_of(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the scripted LLM and STT server, in its own process --------------------------------------


async def serve(port: int, rate: float) -> None:
    from aiohttp import web

    from companion_engine.testing.llmserver import LLMTestServer, Script, TranscriptScript

    class Bench(LLMTestServer):
        """A long reply when asked for one; a transcription of the question, at once."""

        async def _record(self, request: Any) -> Any:
            rec, _ = await super()._record(request)
            last = next((m["content"] for m in reversed(rec.body.get("messages", []))
                         if m.get("role") == "user"), "")
            text = LONG if "long" in last.lower() else REPLY
            return rec, Script(tokens=tokens_of(text), delay_s=1 / rate)

    server = await Bench.start(port)
    server.default_transcript = TranscriptScript(text=QUESTION)
    offset = time.time() - time.perf_counter()

    async def requests(request: web.Request) -> web.Response:
        return web.json_response([{"started": r.started_at + offset,
                                   "closed": r.closed_at + offset if r.closed_at else None,
                                   "completed": r.completed} for r in server.requests])

    app = web.Application()
    app.router.add_get("/requests", requests)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port + 1).start()
    print(f"servers on {server.url}", flush=True)
    await asyncio.Event().wait()


# --- the engine ----------------------------------------------------------------------------


class Engine:
    def __init__(self, root: Path, base: str, *, listening: bool = True) -> None:
        from companion_engine.testing.project import write_project

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = write_project(root, profile={
            "llm": {"model": "openai/test-model", "api_base": base, "timeout_s": 30,
                    "max_tokens": 4000},
            "speech": {"enabled": True, "tts": {"espeak": {}}, "concurrency": 2,
                       "cleaners": ["expressions", "actions", "markdown", "emoji"],
                       "stt": {"openai": {"base_url": base}} if listening else "none",
                       "vad": {"silero": {"min_silence_ms": 500, "min_speech_ms": 250}}},
        }, config={"reload": False, "logging": {"level": "WARNING"},
                   "rate_limit": {"requests": 100000, "window_s": 1},
                   "server": {"max_streams_per_ip": 64}})
        self.log = root / "engine.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        env = dict(os.environ)
        if env.get("BENCH_ENGINE_SRC"):  # another checkout's engine, first on its sys.path
            env["PYTHONPATH"] = env.pop("BENCH_ENGINE_SRC")
        self.proc = await asyncio.create_subprocess_exec(
            str(REPO / ".venv" / "bin" / "companion"), "serve", "--config", str(self.config),
            "--port", str(self.port), "--no-reload", env=env,
            stdout=self.log.open("wb"), stderr=asyncio.subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise SystemExit(f"engine exited: {self.log.read_text()[-2000:]}")
            try:
                async with http.get(self.url + "/health") as resp:
                    if resp.status in (200, 503):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise SystemExit("engine did not start")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


# --- the client ----------------------------------------------------------------------------


class Session:
    """One WebSocket session; every message timestamped on arrival."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.log: list[tuple[float, str, Any]] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                now = time.perf_counter()
                if isinstance(raw, bytes):
                    self.log.append((now, "binary", len(raw)))
                else:
                    msg = json.loads(raw)
                    self.log.append((now, msg["type"], msg["data"]))
        except Exception:
            pass

    async def wait(self, kind: str, after: float = 0.0, within: float = 30, **match: Any
                   ) -> tuple[float, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for at, k, data in self.log:
                if at >= after and k == kind and all(
                        isinstance(data, dict) and data.get(a) == b for a, b in match.items()):
                    return at, data
            await asyncio.sleep(0.002)
        raise TimeoutError(f"no {kind} {match}: {[k for _, k, _ in self.log[-10:]]}")

    async def send(self, kind: str, **fields: Any) -> None:
        await self.conn.send(json.dumps({"type": kind, **fields}))

    async def speak(self, pcm: bytes, frame_ms: int = 20) -> list[float]:
        """Send PCM in real time; the send time of each frame."""
        step = 16 * frame_ms * 2
        start = time.perf_counter()
        sent = []
        for i in range(0, len(pcm), step):
            target = start + i / 32000
            await asyncio.sleep(max(0.0, target - time.perf_counter()))
            sent.append(time.perf_counter())
            await self.conn.send(pcm[i:i + step])
        return sent

    async def close(self) -> None:
        await self.conn.close()
        self._reader.cancel()


async def open_session(engine: Engine, **start: Any) -> Session:
    from websockets.asyncio.client import connect

    conn = await connect(engine.url.replace("http", "ws") + "/api/ws",
                         subprotocols=["companion.v1"], max_size=2**24)  # type: ignore[list-item]
    session = Session(conn)
    await session.send("start", **start)
    await session.wait("ready")
    return session


async def llm_first_fragment_ms(rate: float) -> float:
    """When the scripted LLM has sent the token that completes the first fragment."""
    from companion_engine.config import Profile
    from companion_engine.plugins import PluginHost
    from companion_engine.turn import Turn

    host = PluginHost.load(entry_points=False)
    profile = Profile.model_validate({})
    info = host.stage("sentence_splitter", profile.speech.splitter.name)
    assert info is not None
    splitter = info.cls(info.cls.Options.model_validate(profile.speech.splitter.options))
    toks = tokens_of(REPLY)
    fed = [0]

    async def source() -> Any:
        for i, t in enumerate(toks):
            fed[0] = i
            yield t

    index = len(toks) - 1
    async for _ in splitter.split(source(), Turn(profile=profile, user_message="")):
        index = fed[0]
        break
    return index * 1000 / rate


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))]


async def end_of_speech(engine: Engine, question: Any, runs: int) -> dict[str, list[float]]:
    """Spoken turns: from the end of the user's voice to the first audio frame."""
    out: dict[str, list[float]] = {k: [] for k in ("total", "vad", "after_vad", "stt",
                                                   "server")}
    session = await open_session(engine)
    pcm = question.pcm()
    (_, seg_end), = question.segments
    for _ in range(runs + 1):
        mark = time.perf_counter()
        sent = await session.speak(pcm)
        spoke_until = sent[seg_end * 16 * 2 // 640]  # the frame with the last voiced sample
        vad_at, _ = await session.wait("vad", after=mark, event="speech_end")
        audio_at, _ = await session.wait("binary", after=mark)
        _, done = await session.wait("done", after=mark)
        out["total"].append((audio_at - spoke_until) * 1000)
        out["vad"].append((vad_at - spoke_until) * 1000)
        out["after_vad"].append((audio_at - vad_at) * 1000)
        out["stt"].append(done["timings"]["stt_ms"] or 0)
        out["server"].append(done["timings"]["speech_to_audio_ms"] or 0)
        await asyncio.sleep(0.3)
    await session.close()
    return {k: v[1:] for k, v in out.items()}  # the first run warms up


async def typed(engine: Engine, http: aiohttp.ClientSession, runs: int) -> dict[str, list[float]]:
    """Baselines: the same reply typed over the WebSocket and over SSE."""
    out: dict[str, list[float]] = {"ws_text": [], "sse": []}
    session = await open_session(engine)
    for _ in range(runs + 1):
        mark = time.perf_counter()
        await session.send("text", text="hello")
        audio_at, _ = await session.wait("binary", after=mark)
        await session.wait("done", after=mark)
        out["ws_text"].append((audio_at - mark) * 1000)
        start = time.perf_counter()
        async with http.post(engine.url + "/api/chat/stream",
                             json={"message": "hello"}) as resp:
            first = None
            async for line in resp.content:
                if first is None and line.startswith(b"event: audio_ready"):
                    first = time.perf_counter()
        out["sse"].append(((first or time.perf_counter()) - start) * 1000)
    await session.close()
    return {k: v[1:] for k, v in out.items()}


async def barge_in(engine: Engine, http: aiohttp.ClientSession, stop: Any, runs: int,
                   servers: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"last_frame": [], "interrupted": [], "llm_closed": []}
    pcm = stop.pcm()
    (seg_start, _), = stop.segments
    for _ in range(runs):
        session = await open_session(engine)
        mark = time.perf_counter()
        await session.send("text", text="Tell me something long.")
        await session.wait("binary", after=mark)
        await asyncio.sleep(1.5)  # mid-reply
        sent = await asyncio.wait_for(session.speak(pcm), 30)
        onset = sent[seg_start * 32 // 640]
        interrupted_at, _ = await session.wait("interrupted", after=mark)
        frames = [at for at, k, _ in session.log if k == "binary" and at < interrupted_at]
        out["last_frame"].append((frames[-1] - onset) * 1000)
        out["interrupted"].append((interrupted_at - onset) * 1000)
        async with http.get(servers) as resp:
            reqs = await resp.json()
        wall = time.time() - time.perf_counter()
        mine = [r for r in reqs if r["started"] >= mark + wall - 0.5]
        if mine and mine[0]["closed"] and not mine[0]["completed"]:
            out["llm_closed"].append((mine[0]["closed"] - (onset + wall)) * 1000)
        await session.close()
        await asyncio.sleep(0.5)
    return out


async def vad_cpu(engine: Engine, speech: Any, sessions: int, seconds: float, rounds: int,
                  profile: Path | None = None) -> dict[str, list[float]]:
    """Engine CPU (% of one core) idle with the sessions open, and per session while they
    stream silence and speech in real time; ``rounds`` times, the three interleaved."""
    assert engine.proc is not None
    pid = engine.proc.pid
    opened = [await open_session(engine, enable_tts=False) for _ in range(sessions)]
    silence = bytes(32000 * int(seconds))
    loop_pcm = (speech.pcm() * int(seconds * 32000 // len(speech.pcm()) + 1))[:32000 * int(
        seconds)]
    spy = None
    if profile is not None:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from harness import PySpy

        spy = PySpy(pid, profile / "talk-vad.txt")
        await asyncio.sleep(1)  # py-spy attached

    async def measure(pcm: bytes | None) -> float:
        cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        if pcm is None:
            await asyncio.sleep(seconds)
        else:
            await asyncio.gather(*(s.speak(pcm) for s in opened))
        return (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)

    out: dict[str, list[float]] = {"idle": [], "silence": [], "speech": []}
    try:
        for _ in range(rounds):
            idle = await measure(None)
            silent = await measure(silence)
            talking = await measure(loop_pcm)
            out["idle"].append(idle * 100)
            out["silence"].append((silent - idle) / sessions * 100)
            out["speech"].append((talking - idle) / sessions * 100)
    finally:
        if spy is not None:
            spy.stop()
            print(f"profile: {spy.path}", file=sys.stderr)
    for s in opened:
        await s.close()
    return out


def silero_frame_ms() -> float:
    """Diagnostic (in process): one Silero frame's inference time, in ms."""
    from companion_engine.speech import silero

    model = silero.load()
    state = silero.SileroState()
    frame = bytes(1024)
    for _ in range(50):
        model.probability(frame, state)
    t = time.perf_counter()
    for _ in range(1000):
        model.probability(frame, state)
    return (time.perf_counter() - t)


async def run(args: argparse.Namespace) -> None:
    from tests.talk_helpers import Recording

    question = Recording().silence(300).say("How are you doing today?").silence(1200)
    stop = Recording(seed=3).silence(200).say(STOP).silence(900)
    talk = Recording(seed=5).say("I would like a cup of tea, please.").silence(1500)
    port = free_port()
    while port + 1 == free_port():
        port = free_port()
    servers = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--servers", str(port), "--rate", str(args.rate),
        stdout=asyncio.subprocess.PIPE)
    assert servers.stdout is not None
    await servers.stdout.readline()
    base = f"http://127.0.0.1:{port}/v1"
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(Path(tmp) / "talk", base)
        quiet = Engine(Path(tmp) / "vad", base, listening=False)
        async with aiohttp.ClientSession() as http:
            try:
                if "latency" in parts:
                    await engine.start(http)
                    llm_ms = await llm_first_fragment_ms(args.rate)
                    eos = await end_of_speech(engine, question, args.runs)
                    base_line = await typed(engine, http, args.runs)
                    barge = await barge_in(engine, http, stop, args.runs,
                                           f"http://127.0.0.1:{port + 1}/requests")
                    await engine.stop()
                if "vad" in parts:
                    await quiet.start(http)
                    await asyncio.sleep(5)  # LiteLLM's background import is done
                    cpu = await vad_cpu(quiet, talk, args.sessions, args.seconds,
                                        args.vad_runs, args.profile)
            finally:
                await engine.stop()
                await quiet.stop()
                servers.terminate()
                await servers.wait()
    n = args.runs
    engine_from = os.environ.get("BENCH_ENGINE_SRC") or str(REPO)
    print(f"engine from {engine_from}\n")
    if "latency" in parts:
        print(f"LLM at {args.rate:g} tokens/s (first fragment complete after {llm_ms:.0f} ms), "
              f"STT server answering at once; median / p90 of {n} runs\n")
        print("| end of speech -> first audio byte | median | p90 |")
        print("| --- | --- | --- |")
        for key, label in (("total", "end of the user's voice -> first audio frame received"),
                           ("vad", "of which: the detector's pause (`min_silence_ms` 500 + a "
                                   "frame)"),
                           ("after_vad", "`vad speech_end` -> first audio frame"),
                           ("stt", "of which: STT (server-side `stt_ms`)"),
                           ("server", "server-side `speech_to_audio_ms`")):
            print(f"| {label} | {median(eos[key]):.0f} ms | {p90(eos[key]):.0f} ms |")
        engine_part = [a - llm_ms for a in eos["after_vad"]]
        print(f"| **`speech_end` -> audio, less the LLM's {llm_ms:.0f} ms** (goal <= 250 ms) | "
              f"**{median(engine_part):.0f} ms** | {p90(engine_part):.0f} ms |")
        print(f"| baseline: typed over /api/ws, text -> first audio frame | "
              f"{median(base_line['ws_text']):.0f} ms | {p90(base_line['ws_text']):.0f} ms |")
        print(f"| baseline: /api/chat/stream, request -> first `audio_ready` | "
              f"{median(base_line['sse']):.0f} ms | {p90(base_line['sse']):.0f} ms |")
        print("\n| barge-in (from the first frame of the user's voice) | median | p90 | max |")
        print("| --- | --- | --- | --- |")
        for key, label in (("last_frame", "**last audio frame received** (goal <= 100 ms)"),
                           ("interrupted", "`interrupted` received (`min_speech_ms` 250)"),
                           ("llm_closed", "LLM stream closed (seen by the LLM server)")):
            xs = barge[key]
            if xs:
                print(f"| {label} | {median(xs):.0f} ms | {p90(xs):.0f} ms | "
                      f"{max(xs):.0f} ms |")
    if "vad" in parts:
        frame_s = silero_frame_ms()
        print(f"\nVAD, {args.sessions} live sessions streaming {args.seconds:g} s each in real "
              f"time (engine CPU, % of one core; median of {args.vad_runs} rounds, each "
              f"round's figures in brackets):\n")
        print("| what | CPU |")
        print("| --- | --- |")

        def row(key: str) -> str:
            each = ", ".join(f"{x:.2f}" for x in cpu[key])
            return f"{median(cpu[key]):.2f} % [{each}]"

        print(f"| engine idle, sessions open (baseline) | {row('idle')} |")
        print(f"| per session, silence | {row('silence')} |")
        print(f"| **per session, speech and silence** (goal < 2 %) | **{row('speech')}** |")
        print(f"| diagnostic, in process: one Silero frame (32 ms of audio) | "
              f"{frame_s:.3f} ms = {frame_s / 32 * 100:.2f} % of one core |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--vad-runs", type=int, default=3,
                        help="rounds of the VAD CPU measurement (medians printed)")
    parser.add_argument("--parts", default="latency,vad",
                        help="what to measure: latency (end of speech, barge-in), vad")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy the VAD engine while the sessions stream")
    parser.add_argument("--servers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if args.servers:
        asyncio.run(serve(args.servers, args.rate))
    else:
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
