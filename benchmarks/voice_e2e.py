"""Voice, end to end through HTTP: first audio with Piper, chunked first bytes, Opus's cost.

Three processes: a real ``companion serve`` (one with the ``piper_local`` voice, one with
``espeak`` as the baseline), the scripted LLM server (this file run with ``--llm``), and this
client. The LLM streams a reply at ``--rate`` tokens/s; the client timestamps each SSE event
as it arrives. Measured per turn (median and p90 of ``--runs`` turns after warm-up):

- **first audio**: from the ``content`` event that completes the first sentence (the fast
  first fragment, "Hello there, my friend,", 23 characters) to the first ``audio_ready``;
  Piper and espeak in the same run;
- **chunked first bytes**: a reply whose first sentence is 80 characters with no clause mark,
  from its completing ``content`` event to the first ``audio_chunk`` (``chunked_audio``),
  next to the whole-sentence ``audio_ready`` of the same sentence;
- **Opus's share**: engine CPU time per turn (``/proc/PID/task/*/schedstat``) for a 10-sentence
  reply with speech off, WAV and Opus in a rotating order; the median over runs of (Opus - WAV)
  over (WAV - off) is encoding's share of synthesis, next to the same for a second WAV turn
  (A/A: the method's noise).

    python benchmarks/voice_e2e.py [--runs 10] [--rate 30] [--profile] [--baseline CHECKOUT]

``--baseline /work/main`` adds a third engine, Piper from that checkout, whose turns run
interleaved with this checkout's (rows marked ``[baseline engine]``): before/after in one run
on a noisy machine. ``BENCH_ENGINE_SRC=CHECKOUT`` runs every engine from that checkout.

``--profile`` records the Piper engine with ``py-spy record --threads --full-filenames``
during the measured turns and prints the functions with the most samples (leaf frames).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
sys.path.insert(0, str(REPO / "benchmarks"))

from harness import process_cpu_s  # noqa: E402 - the benchmarks folder, just added

FRAGMENT_REPLY = ("Hello there, my friend, it is so good to see you again today. I was "
                  "just thinking about you and the garden we planted last spring. Shall we go "
                  "and see how the roses are doing?")
LONG_FIRST = "The old lighthouse keeper walked up the winding stairs to light the great lamp."
LONG_REPLY = (f"{LONG_FIRST} Far below him the waves broke on the rocks. He smiled and began "
              "his work.")
ESSAY_REPLY = " ".join([
    "The morning fog rolled in over the quiet harbor before dawn.",
    "Fishermen prepared their nets and talked about the weather.",
    "A gull cried somewhere above the old stone pier.",
    "Nobody noticed the small boat drifting near the lighthouse.",
    "It carried a letter sealed with dark green wax.",
    "The letter was addressed to a woman who had left years ago.",
    "Her brother still lived in the blue house by the water.",
    "He found the boat when the tide went out that afternoon.",
    "He read the letter twice and then sat down on the sand.",
    "By evening the whole village knew that she was coming home.",
])
REPLIES = {"fragment": FRAGMENT_REPLY, "long": LONG_REPLY, "essay": ESSAY_REPLY}
FRAGMENT = "Hello there, my friend,"


def tokens_of(text: str) -> list[str]:
    """LLM-like tokens: words with their leading space, punctuation on its own."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        lead = " " if i else ""
        if word[-1:] in ",.?!":
            out += [lead + word[:-1], word[-1]]
        else:
            out.append(lead + word)
    return out


# --- the scripted LLM, in its own process -----------------------------------------------------


async def serve_llm(port: int, rate: float) -> None:
    from companion_engine.testing.llmserver import LLMTestServer, Script

    class ByMessage(LLMTestServer):
        """Plays the reply named by the last user message (fragment, long or essay)."""

        async def _record(self, request: Any) -> Any:
            rec, _ = await super()._record(request)
            self.requests.clear()
            last = next((m["content"] for m in reversed(rec.body.get("messages", []))
                         if m.get("role") == "user"), "fragment")
            name = last if last in REPLIES else "fragment"
            delay = 0.0 if name == "essay" else 1 / rate
            return rec, Script(tokens=tokens_of(REPLIES[name]), delay_s=delay)

    server = await ByMessage.start(port)
    print(f"llm listening on {server.url}", flush=True)
    await asyncio.Event().wait()


# --- the engine -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Engine:
    def __init__(self, root: Path, tts: dict[str, Any], llm_base: str,
                 src: str | None = None) -> None:
        from companion_engine.testing.project import write_project

        #: Another checkout whose engine this one runs (None: this checkout's).
        self.src = src or os.environ.get("BENCH_ENGINE_SRC") or None

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = write_project(root, profile={
            "llm": {"model": "openai/test-model", "api_base": llm_base, "timeout_s": 30,
                    "max_tokens": 2000},
            "speech": {"enabled": True, "tts": tts, "concurrency": 2,
                       "cleaners": ["expressions", "actions", "markdown", "emoji"]},
        }, config={"reload": False, "logging": {"level": "WARNING"},
                   "rate_limit": {"requests": 100000, "window_s": 1}})
        self.proc: asyncio.subprocess.Process | None = None
        self.log = root / "engine.log"

    async def start(self, session: aiohttp.ClientSession) -> None:
        env = dict(os.environ)
        if self.src:  # another checkout's engine (e.g. main)
            env["PYTHONPATH"] = self.src
        self.proc = await asyncio.create_subprocess_exec(
            str(REPO / ".venv" / "bin" / "companion"), "serve", "--config", str(self.config),
            "--port", str(self.port), "--no-reload", env=env,
            stdout=self.log.open("wb"), stderr=asyncio.subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise SystemExit(f"engine exited; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                async with session.get(self.url + "/health") as resp:
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

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


async def turn(session: aiohttp.ClientSession, engine: Engine, message: str,
               **options: Any) -> list[tuple[float, str, dict[str, Any]]]:
    """One streamed turn: ``(arrival perf_counter, event, data)`` for every event."""
    events: list[tuple[float, str, dict[str, Any]]] = []
    body = {"messages": [{"role": "user", "content": message}], **options}
    async with session.post(engine.url + "/api/chat/stream", json=body) as resp:
        assert resp.status == 200, await resp.text()
        name = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((time.perf_counter(), name, json.loads(line[6:])))
    assert events and events[-1][1] == "done", events[-1:]
    return events


def first_sentence_gap(events: list[tuple[float, str, dict[str, Any]]], audio: str) -> float:
    """ms from the content event completing sentence 0 to the first ``audio`` event."""
    done_at = next(t for t, n, d in events if n == "content" and d.get("sentence_complete"))
    audio_at = next(t for t, n, d in events if n == audio and d["index"] == 0)
    return (audio_at - done_at) * 1000


def stats(values: list[float]) -> str:
    v = sorted(values)
    p90 = v[min(len(v) - 1, round(0.9 * (len(v) - 1)))]
    return f"{statistics.median(v):.1f} ms (p90 {p90:.1f})"


async def start_profile(pid: int, out: Path) -> asyncio.subprocess.Process:
    spy = str(Path(sys.executable).with_name("py-spy"))
    return await asyncio.create_subprocess_exec(
        spy, "record", "--threads", "--full-filenames", "--format", "raw", "--rate", "200",
        "-o", str(out), "-p", str(pid), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)


def top_frames(raw: Path, n: int = 15) -> str:
    """The leaf frames with the most samples in a py-spy ``raw`` (collapsed stacks) file."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        counts[leaf] = counts.get(leaf, 0) + int(count)
        total += int(count)
    best = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return "\n".join(f"  {c * 100 / total:5.1f}%  {leaf}" for leaf, c in best)


async def measure(runs: int, rate: float, profile: bool, baseline: str | None) -> None:
    profile_text = ""
    llm_port = free_port()
    llm = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--llm", str(llm_port), "--rate", str(rate),
        stdout=asyncio.subprocess.PIPE)
    assert llm.stdout is not None
    await llm.stdout.readline()
    llm_base = f"http://127.0.0.1:{llm_port}/v1"
    timeout = aiohttp.ClientTimeout(total=120)
    with tempfile.TemporaryDirectory() as tmp:
        piper = Engine(Path(tmp) / "piper", {"piper_local": {"voice": "en_US-joe-medium"}},
                       llm_base)
        espeak = Engine(Path(tmp) / "espeak", {"espeak": {"voice": "en-us"}}, llm_base)
        before = Engine(Path(tmp) / "before", {"piper_local": {"voice": "en_US-joe-medium"}},
                        llm_base, src=baseline) if baseline else None
        engines = [e for e in (piper, espeak, before) if e is not None]
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                for engine in engines:
                    await engine.start(session)
                for engine in engines:  # warm-up: imports, the voice, caches
                    for message in ("fragment", "long", "essay"):
                        await turn(session, engine, message)
                        await turn(session, engine, message, audio_format="opus",
                                   chunked_audio=True)
                spy = await start_profile(piper.pid, Path(tmp) / "profile.txt") if profile \
                    else None
                rows = await scenarios(session, piper, espeak, runs, before)
                if spy is not None:
                    spy.send_signal(2)  # SIGINT: py-spy writes what it has
                    await spy.wait()
            finally:
                for engine in engines:
                    await engine.stop()
                llm.terminate()
                await llm.wait()
            if profile and (Path(tmp) / "profile.txt").exists():
                profile_text = top_frames(Path(tmp) / "profile.txt")
    print(f"\nrate {rate:g} tokens/s, {runs} turns per row after warm-up, "
          f"{os.cpu_count()} cores, engine from {piper.src or REPO}"
          f"{f', baseline engine from {baseline}' if baseline else ''}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| measurement | median (p90) |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if profile_text:
        print("\npy-spy, Piper engine during the measured turns (leaf frames, % of samples):")
        print(profile_text)


async def scenarios(session: aiohttp.ClientSession, piper: Engine, espeak: Engine,
                    runs: int, before: Engine | None = None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    pipers = [("", piper)] + ([(" [baseline engine]", before)] if before else [])
    gaps: dict[str, list[float]] = {}
    first_len = long_len = 0

    def add(key: str, value: float) -> None:
        gaps.setdefault(key, []).append(value)

    for run in range(runs):  # interleaved, so machine noise hits every row alike
        for tag, engine in pipers if run % 2 == 0 else pipers[::-1]:  # each goes first
            ev = await turn(session, engine, "fragment")
            add("piper" + tag, first_sentence_gap(ev, "audio_ready"))
            first_len = len(next(d["sentence"] for _, n, d in ev if d.get("sentence_complete")))
            ev = await turn(session, engine, "long", chunked_audio=True)
            add("chunk" + tag, first_sentence_gap(ev, "audio_chunk"))
            long_len = len(next(d["sentence"] for _, n, d in ev if d.get("sentence_complete")))
            add("whole" + tag, first_sentence_gap(await turn(session, engine, "long"),
                                                  "audio_ready"))
            started = time.perf_counter()  # the same fragment through POST /api/tts
            async with session.post(engine.url + "/api/tts", json={"text": FRAGMENT}) as resp:
                assert resp.status == 200
                await resp.read()
            add("synth" + tag, (time.perf_counter() - started) * 1000)
        add("espeak", first_sentence_gap(await turn(session, espeak, "fragment"), "audio_ready"))
    for tag, _ in pipers:
        rows.append((f"Piper: first audio after the first fragment's last token "
                     f"({first_len} chars) [goal <= 80 ms]{tag}", stats(gaps["piper" + tag])))
        rows.append((f"baseline: POST /api/tts of the same fragment (synthesis alone, + HTTP)"
                     f"{tag}", stats(gaps["synth" + tag])))
    rows.append(("espeak (baseline, same reply)", stats(gaps["espeak"])))
    for tag, _ in pipers:
        rows.append((f"Piper chunked: first audio_chunk after the {long_len}-char first "
                     f"sentence's last token [goal <= 60 ms]{tag}", stats(gaps["chunk" + tag])))
        rows.append((f"Piper whole sentence, same sentence (baseline){tag}",
                     stats(gaps["whole" + tag])))

    # Opus's share of synthesis is a small difference of two large CPU figures, so: CPU
    # from schedstat (ns, all threads; /proc/PID/stat counts 10 ms ticks), the three formats
    # in a rotating order (none always runs first or after another), paired differences
    # within a run, and a second WAV turn as an A/A row: the noise floor of the method.
    cpu: dict[str, list[float]] = {}
    formats = (("off", {"enable_tts": False}), ("wav", {"audio_format": "wav"}),
               ("opus", {"audio_format": "opus"}), ("wav2", {"audio_format": "wav"}))
    for run in range(runs):
        order = formats[run % 4:] + formats[:run % 4]
        for tag, engine in pipers if run % 2 == 0 else pipers[::-1]:
            for name, options in order:
                start = process_cpu_s(engine.pid)
                ev = await turn(session, engine, "essay", **options)
                cpu.setdefault(name + tag, []).append((process_cpu_s(engine.pid) - start) * 1000)
                if name == "opus":
                    assert all(d["format"] == "opus" for _, n, d in ev if n == "audio_ready")
    for tag, _ in pipers:
        off, wav, opus = (statistics.median(cpu[k + tag]) for k in ("off", "wav", "opus"))
        synth = wav - off
        extra = statistics.median(o - w for o, w in zip(cpu["opus" + tag], cpu["wav" + tag],
                                                        strict=True))
        noise = statistics.median(w2 - w for w2, w in zip(cpu["wav2" + tag], cpu["wav" + tag],
                                                          strict=True))
        rows.append((f"engine CPU per 10-sentence turn: speech off / WAV / Opus{tag}",
                     f"{off:.0f} / {wav:.0f} / {opus:.0f} ms"))
        rows.append((f"Opus encoding as a share of synthesis, median of (Opus - WAV) per run / "
                     f"(WAV - off) [goal <= 5%]{tag}", f"{extra / synth * 100:.1f}%"))
        rows.append((f"A/A: a second WAV turn, the same way (the method's noise){tag}",
                     f"{noise / synth * 100:+.1f}%"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=30.0, help="LLM tokens per second")
    parser.add_argument("--profile", action="store_true", help="py-spy the Piper engine")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also run another checkout's Piper engine (e.g. /work/main), "
                             "its turns interleaved with this one's, as a baseline row")
    parser.add_argument("--llm", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llm is not None:
        asyncio.run(serve_llm(args.llm, args.rate))
        return
    asyncio.run(measure(args.runs, args.rate, args.profile, args.baseline))


if __name__ == "__main__":
    main()
