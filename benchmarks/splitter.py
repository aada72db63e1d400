"""The ``sentence`` splitter next to stream2sentence and pysbd, on the same text in the same run.

For each splitter: where the first piece comes out (characters of the reply
consumed before it, i.e. how early TTS can start), the first piece itself, the
number of pieces, and the throughput when the reply is fed LLM-token by token.
pysbd is not a streaming splitter: it is driven the usual way (re-segment the
buffer after each token, emit all but the last segment), and also timed on the
whole text at once. stream2sentence runs with its offline ``rule-based``
tokenizer (no NLTK or stanza data is downloaded).

    python benchmarks/splitter.py [--runs 20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from companion_engine.speech.splitter import SentenceScanner, SplitOptions

REPLY = (
    "Oh my, after everything that happened on the road today, you must be exhausted, "
    "so please come in and rest. I wasn't expecting anyone on the road so late. "
    "Dr. Mirelle said the pass would be closed until 6 p.m. tomorrow, but here you are. "
    "The toll is $2.50, or 3.5 silver if you're paying in the old coin. "
    "\"Is that fair?\" you ask. Well... it's what the U.S. Trading Company charges, so yes. "
    "Come, sit by the fire; I have tea, bread and a little honey. "
    "My grandmother used to say that a guest who arrives after dark brings news, "
    "and I would very much like to hear yours. "
    "Where are you headed? North, to Elderglen? Or east, past the ruins of St. Aldric's?\n"
    "Either way, rest first. The wolves were loud last night, and I'd rather you kept "
    "all ten fingers. Version 1.2 of the old map is wrong about the bridge, by the way. "
    "It washed out in the spring floods. Ask for Mr. Thorne at the ferry instead."
)
TOKEN = re.compile(r"\s*[^\s]{1,4}|\s+")


def tokens(text: str) -> list[str]:
    """LLM-like pieces: about four characters, a leading space kept with its word."""
    return TOKEN.findall(text)


@dataclass
class Result:
    name: str
    first_at: int  # characters consumed when the first piece came out
    first: str
    pieces: int
    seconds: float  # median time to split the whole reply, token by token
    chars: int

    @property
    def throughput(self) -> float:
        return self.chars / self.seconds


def ours(fast: bool) -> Callable[[list[str]], Iterator[tuple[int, str]]]:
    def run(toks: list[str]) -> Iterator[tuple[int, str]]:
        scanner = SentenceScanner(SplitOptions(fast_first_fragment=fast))
        seen = 0
        for tok in toks:
            seen += len(tok)
            for s in scanner.feed(tok):
                yield seen, s
        for s in scanner.finish():
            yield seen, s

    return run


def stream2sentence(quick: bool) -> Callable[[list[str]], Iterator[tuple[int, str]]]:
    from stream2sentence import generate_sentences

    def run(toks: list[str]) -> Iterator[tuple[int, str]]:
        seen = [0]

        def source() -> Iterator[str]:
            for tok in toks:
                seen[0] += len(tok)
                yield tok

        for s in generate_sentences(source(), tokenizer="rule-based",
                                    quick_yield_single_sentence_fragment=quick,
                                    minimum_first_fragment_length=20,
                                    minimum_sentence_length=12):
            yield seen[0], s

    return run


def pysbd_streaming(toks: list[str]) -> Iterator[tuple[int, str]]:
    import pysbd

    seg = pysbd.Segmenter(language="en", clean=False)
    buf = ""
    seen = 0
    for tok in toks:
        seen += len(tok)
        buf += tok
        parts = seg.segment(buf)
        if len(parts) > 1:
            for s in parts[:-1]:
                yield seen, s.strip()
            buf = parts[-1]
    for s in seg.segment(buf) if buf.strip() else []:
        yield seen, s.strip()


def measure(name: str, run: Callable[[list[str]], Iterator[tuple[int, str]]], toks: list[str],
            runs: int) -> Result:
    out = list(run(toks))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in run(toks):
            pass
        times.append(time.perf_counter() - t0)
    return Result(name, out[0][0], out[0][1], len(out), statistics.median(times),
                  sum(map(len, toks)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    toks = tokens(REPLY)
    results = [
        measure("sentence (fast first fragment)", ours(True), toks, args.runs),
        measure("sentence (fast first fragment off)", ours(False), toks, args.runs),
        measure("stream2sentence quick yield", stream2sentence(True), toks, args.runs),
        measure("stream2sentence", stream2sentence(False), toks, args.runs),
        measure("pysbd, re-segment per token", pysbd_streaming, toks, max(3, args.runs // 5)),
    ]
    base = results[0]
    print(f"reply: {len(REPLY)} characters in {len(toks)} tokens, median of {args.runs} runs\n")
    print("| splitter | first piece after | first piece | pieces | chars/s | time vs ours |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        first = r.first if len(r.first) <= 40 else r.first[:37] + "..."
        print(f"| {r.name} | {r.first_at} chars | {first!r} | {r.pieces} | "
              f"{r.throughput:,.0f} | {r.seconds / base.seconds:.1f}x |")
    import pysbd

    seg = pysbd.Segmenter(language="en", clean=False)
    big = REPLY * 20
    t0 = time.perf_counter()
    seg.segment(big)
    pysbd_whole = time.perf_counter() - t0
    scanner = SentenceScanner()
    t0 = time.perf_counter()
    for tok in tokens(big):
        scanner.feed(tok)
    scanner.finish()
    ours_big = time.perf_counter() - t0
    print(f"\n{len(big):,} characters: sentence, token by token {len(big) / ours_big:,.0f} "
          f"chars/s; pysbd on the whole text at once {len(big) / pysbd_whole:,.0f} chars/s")


if __name__ == "__main__":
    main()
