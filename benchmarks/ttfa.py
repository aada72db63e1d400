"""Time to first audio with the embedded espeak backend, fast first fragment on and off.

A simulated LLM streams the same reply at 30 tokens/s (about four characters a
token) into the ``sentence`` splitter and a ``SpeechSession`` with the default
cleaners and ``espeak``, as the chat runner does. For each run:

- ``ttfa``: from the first token to the first ``audio_ready`` handed to ``emit``;
- ``llm``: from the first token to the token that completed the first fragment
  (the LLM's part: the engine cannot speak before that text exists);
- ``synth``: espeak's time for the first fragment;
- ``engine``: ttfa - llm - synth, i.e. splitting, cleaning, scheduling and encoding.

    python benchmarks/ttfa.py [--runs 15] [--rate 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from companion_engine.config import Profile
from companion_engine.pipeline import build_pipeline
from companion_engine.plugins import PluginHost
from companion_engine.speech import espeak
from companion_engine.speech.session import SpeechSession
from companion_engine.turn import Turn

sys.path.insert(0, str(Path(__file__).parent))
from splitter import REPLY, tokens

#: The reply's first two sentences: enough for the first audio, quick to repeat.
FIRST_TOKENS = 60


async def one_run(host: PluginHost, fast: bool, rate: float) -> dict[str, float]:
    profile = Profile.model_validate({"prompt": [], "output": [], "speech": {
        "splitter": {"sentence": {"fast_first_fragment": fast}}}})
    pipeline = build_pipeline(profile, host)
    turn = Turn(profile=profile, user_message="hi")
    first_audio = asyncio.Event()

    async def emit(name: str, data: dict[str, Any]) -> None:
        if name == "audio_ready":
            first_audio.set()

    session = SpeechSession(pipeline, turn, emit)
    last_token_at = [0.0]

    async def llm() -> AsyncIterator[str]:
        for i, tok in enumerate(tokens(REPLY)[:FIRST_TOKENS]):
            if i:
                await asyncio.sleep(1 / rate)
            last_token_at[0] = time.perf_counter()
            yield tok

    start = time.perf_counter()
    decided_at = None
    async for sentence in pipeline.splitter.split(llm(), turn):
        if decided_at is None:
            decided_at = last_token_at[0]
        session.add(sentence)
    await session.finish()
    await pipeline.aclose()
    assert session.first_audio_at is not None and decided_at is not None
    first = session.items[0]
    assert first.synth_started_at is not None and first.synth_done_at is not None
    ttfa = session.first_audio_at - start
    llm_part = decided_at - start
    synth = first.synth_done_at - first.synth_started_at
    return {"ttfa": ttfa * 1000, "llm": llm_part * 1000, "synth": synth * 1000,
            "engine": (ttfa - llm_part - synth) * 1000, "chars": len(first.sentence)}


async def run(runs: int, rate: float) -> None:
    host = PluginHost.load(entry_points=False)
    await espeak.engine().warm_up()
    print(f"reply streamed at {rate:g} tokens/s; median of {runs} runs; espeak warm\n")
    print("| fast first fragment | first piece | ttfa | LLM part | synthesis | engine part "
          "(median / p90) |")
    print("| --- | --- | --- | --- | --- | --- |")
    medians = {}
    for fast in (True, False):
        rows = [await one_run(host, fast, rate) for _ in range(runs)]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        p90 = sorted(r["engine"] for r in rows)[int(0.9 * (runs - 1))]
        medians[fast] = med
        print(f"| {'on' if fast else 'off'} | {med['chars']:.0f} chars | {med['ttfa']:.1f} ms | "
              f"{med['llm']:.1f} ms | {med['synth']:.2f} ms | {med['engine']:.2f} ms / "
              f"{p90:.2f} ms |")
    on, off = medians[True]["ttfa"], medians[False]["ttfa"]
    print(f"\nfast first fragment: first audio {off / on:.1f}x sooner ({off - on:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rate", type=float, default=30.0, help="LLM tokens per second")
    args = parser.parse_args()
    asyncio.run(run(args.runs, args.rate))


if __name__ == "__main__":
    main()
