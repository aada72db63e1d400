"""Lorebook scan speed: 10,000 entries (plain and regex keys) over the 10 newest messages.

End to end (the goal figure: <= 2 ms over an empty book): a real ``companion serve``
holds two cards that differ only in their ``character_book`` (10,000 entries, or
none); this script alternates ``POST /api/prompt/preview`` requests for each over the
same 10-message chats (and, with ``--chat``, streamed chat turns, timing the first
token), so the difference of the medians is what the lorebook costs a request.

In-process micro-benchmarks (diagnostics): the compiled scan's time per turn next to
a naive per-entry loop (SillyTavern's ``matchKeys``, one key at a time:
``lorebook/reference.py``) measured in the same run on the same chats.

    .venv/bin/python benchmarks/lorebook_scan.py [--entries 10000] [--turns 200]
        [--e2e-requests 200] [--chat] [--no-micro] [--no-e2e]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import time
from pathlib import Path

from companion_engine.lorebook import (
    CompileSettings,
    ScanOptions,
    Source,
    compile_lore,
    from_object,
    scan,
)
from companion_engine.lorebook.keys import compile_js_regex, parse_js_regex
from companion_engine.lorebook.reference import st_match
from companion_engine.tokens import counter_for, estimate_tokens

sys.path.insert(0, str(Path(__file__).resolve().parent))

COMMON = ("the a and to of I you it is in that was he she we they on with as at for not but "
          "what this have be had there so my your all one do when out up if about then would "
          "into like time could no just him know take people year good some them see other "
          "than now look only come its over think also back after use two how our work first "
          "well way even new want because any these give day most us forest castle sword").split()


def vocabulary(rng: random.Random, n: int) -> list[str]:
    """Made-up names (places, people, creatures) as lorebooks have them."""
    onsets = [*"bcdfghjklmnprstvwz", "th", "sh", "ch", "br", "dr", "kr", "st", "gr", "vr"]
    vowels = [*"aeiouy", "ae", "ei", "ou", "ia"]
    codas = ["", "", "n", "r", "s", "l", "th", "x", "nd", "rk"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                          for _ in range(rng.randint(2, 3))))
    return sorted(words)


def make_book(rng: random.Random, vocab: list[str], n: int, regex_share: float) -> dict:
    entries = []
    for i in range(n):
        keys = []
        for _ in range(rng.randint(1, 4)):
            roll = rng.random()
            if roll < regex_share:
                w = rng.choice(vocab)
                keys.append(rng.choice([f"/\\b{w}s?\\b/i", f"/{w[:4]}\\w*{w[-2:]}/",
                                        f"/(?:{w}|{rng.choice(vocab)})/i", f"/{w}\\d*/"]))
            elif roll < regex_share + 0.2:
                keys.append(f"{rng.choice(vocab)} {rng.choice(vocab + COMMON)}")
            else:
                keys.append(rng.choice(vocab))
        secondary = [rng.choice(vocab)] if rng.random() < 0.1 else []
        entries.append({"id": i, "keys": keys, "secondary_keys": secondary,
                        "selective": bool(secondary), "content": f"Lore {i}: " + " ".join(
                            rng.choice(vocab + COMMON) for _ in range(30)),
                        "insertion_order": rng.randint(0, 200), "enabled": True,
                        "extensions": {}})
    return {"entries": entries}


def make_chat(rng: random.Random, vocab: list[str], messages: int = 10) -> list[str]:
    lines = []
    for i in range(messages):
        words = [rng.choice(vocab) if rng.random() < 0.04 else rng.choice(COMMON)
                 for _ in range(rng.randint(30, 70))]
        lines.append(("User: " if i % 2 else "Aria: ") + " ".join(words) + ".")
    return lines  # newest first for scan()


def naive_scan(book: dict, chat: list[str], depth: int) -> list[int]:
    """Every entry, every key, ``st_match`` on the buffer: what a per-entry loop costs."""
    buffer = "\x01" + "\n\x01".join(chat[:depth])
    hits = []
    for e in book["entries"]:
        if any(st_match(buffer, k) for k in e["keys"]):
            if e["secondary_keys"] and not any(st_match(buffer, k) for k in e["secondary_keys"]):
                continue
            hits.append(e["id"])
    return hits


def precompile(book: dict) -> list[tuple[int, list, list]]:
    """The naive loop with each key compiled once (a regex per key, as ST builds them)."""
    def matcher(key: str):  # type: ignore[no-untyped-def]
        parsed = parse_js_regex(key)
        if parsed is not None:
            pattern, _ = compile_js_regex(*parsed)
            return lambda text, low: pattern.search(text) is not None
        k = key.lower()
        if len(k.split()) > 1:
            return lambda text, low: k in low
        bounded = re.compile(r"(?:^|[^A-Za-z0-9_])(" + re.escape(k) + r")(?:$|[^A-Za-z0-9_])")
        return lambda text, low: bounded.search(low) is not None

    return [(e["id"], [matcher(k) for k in e["keys"]], [matcher(k) for k in e["secondary_keys"]])
            for e in book["entries"]]


def naive_precompiled_scan(entries: list[tuple[int, list, list]], chat: list[str],
                           depth: int) -> list[int]:
    buffer = "\x01" + "\n\x01".join(chat[:depth])
    low = buffer.lower()
    hits = []
    for uid, keys, secondary in entries:
        if any(m(buffer, low) for m in keys):
            if secondary and not any(m(buffer, low) for m in secondary):
                continue
            hits.append(uid)
    return hits


def card(name: str, book: dict) -> dict:
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": name, "description": f"{name} keeps the archives of the old forest castle.",
        "personality": "curious", "scenario": "", "first_mes": "Welcome to the archive.",
        "mes_example": "", "creator_notes": "", "system_prompt": "",
        "post_history_instructions": "", "alternate_greetings": [], "tags": [],
        "creator": "bench", "character_version": "1", "extensions": {},
        "character_book": book}}


async def end_to_end(book: dict, chats: list[list[str]], requests: int,
                     chat_turns: bool, profile_dir: Path | None = None) -> None:
    """The same requests against the 10k-entry card and against the empty one."""
    import time as clock

    from harness import (
        EngineProcess,
        LLMServerProcess,
        PySpy,
        llm_settings,
        session,
        stream_chat,
    )

    llm = LLMServerProcess()
    await llm.set_default({"tokens": ["Yes", "."]})
    profile = {"llm": llm_settings(llm), "speech": {"enabled": False},
               "prompt": ["system_prompt", "first_message",
                          {"lorebook": {"scan_depth": 10, "token_budget": 800}},
                          "character_definition", "example_dialogue",
                          {"history": {"max_tokens": 3000}}, "post_history_instructions"]}
    engine = await EngineProcess(profile, characters={
        "big": card("Archivist", book), "empty": card("Archivist", {"entries": []})}).start()
    lines: list[str] = []
    try:
        def body(chat: list[str], character: str) -> dict:
            oldest_first = list(reversed(chat))
            messages = [{"role": "user" if i % 2 == (len(oldest_first) - 1) % 2 else
                         "assistant", "content": m.split(": ", 1)[1]}
                        for i, m in enumerate(oldest_first)]
            return {"character_id": character, "messages": messages}

        async with session() as s:
            async def preview(chat: list[str], character: str) -> tuple[float, float, int]:
                cpu0 = engine.cpu_s()
                t = clock.perf_counter()
                async with s.post(f"{engine.url}/api/prompt/preview",
                                  json=body(chat, character)) as r:
                    doc = await r.json()
                wall = clock.perf_counter() - t
                assert r.status == 200, doc
                return wall, engine.cpu_s() - cpu0, len(doc["lore"])

            for chat in chats[:20]:  # warm up: compile, caches, tokenizer
                await preview(chat, "big")
                await preview(chat, "empty")
            big, empty = [], []
            spy = None
            if profile_dir is not None:  # made by main()
                spy = PySpy(engine.pid, profile_dir / "lorebook-preview.txt")
            for i in range(requests):
                chat = chats[i % len(chats)]
                big.append(await preview(chat, "big"))
                empty.append(await preview(chat, "empty"))
            if spy is not None:
                spy.stop()
                print(f"profile: {spy.path} (the previews, both books)")
            mb, me = statistics.median(w for w, _, _ in big), statistics.median(
                w for w, _, _ in empty)
            cb, ce = statistics.median(c for _, c, _ in big), statistics.median(
                c for _, c, _ in empty)
            lines.append(f"| `POST /api/prompt/preview`, 10,000-entry book | {mb * 1000:.2f} ms | "
                         f"{cb * 1000:.2f} ms | {statistics.mean(n for *_, n in big):.1f} |")
            lines.append(f"| the same, empty book (baseline) | {me * 1000:.2f} ms | "
                         f"{ce * 1000:.2f} ms | 0 |")
            lines.append(f"| **difference (the lorebook's cost; goal <= 2 ms)** | "
                         f"**{(mb - me) * 1000:.2f} ms** | {(cb - ce) * 1000:.2f} ms | |")
            if chat_turns:
                async def ttft(chat: list[str], character: str) -> float:
                    r = await stream_chat(s, engine.url, body(chat, character))
                    assert r.done is not None, r.body[:200]
                    return r.content_at[0] - r.started

                tb, te = [], []
                for i in range(requests):
                    chat = chats[i % len(chats)]
                    tb.append(await ttft(chat, "big"))
                    te.append(await ttft(chat, "empty"))
                b, e = statistics.median(tb), statistics.median(te)
                lines.append(f"| chat turn, first token, 10,000-entry book | {b * 1000:.2f} ms "
                             f"| | |")
                lines.append(f"| the same, empty book (baseline) | {e * 1000:.2f} ms | | |")
                lines.append(f"| **difference** | **{(b - e) * 1000:.2f} ms** | | |")
    finally:
        engine.stop()
        llm.stop()
    print(f"\nend to end ({requests} requests each, alternating, medians; engine, LLM "
          "server and client in 3 processes):\n")
    print("| request | wall (client) | engine CPU | entries activated |")
    print("| --- | --- | --- | --- |")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--naive-turns", type=int, default=5)
    ap.add_argument("--regex-share", type=float, default=0.25)
    ap.add_argument("--e2e-requests", type=int, default=200)
    ap.add_argument("--chat", action="store_true", help="also time streamed chat turns")
    ap.add_argument("--no-micro", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="py-spy the engine during the end-to-end previews")
    args = ap.parse_args()
    rng = random.Random(42)
    vocab = vocabulary(rng, 6000)
    book = make_book(rng, vocab, args.entries, args.regex_share)
    chats = [make_chat(rng, vocab) for _ in range(args.turns)]
    if not args.no_e2e:
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        asyncio.run(end_to_end(book, chats, args.e2e_requests, args.chat, args.profile))
    if args.no_micro:
        return
    print("\nin-process micro-benchmarks (diagnostics):")
    n_regex = sum(k.startswith("/") for e in book["entries"] for k in e["keys"])
    n_keys = sum(len(e["keys"]) for e in book["entries"])
    print(f"lorebook: {args.entries} entries, {n_keys} keys ({n_regex} regex), "
          f"chat: 10 messages of ~{statistics.mean(len(m) for c in chats for m in c):.0f} chars")

    t0 = time.perf_counter()
    lore = compile_lore([Source(from_object(book, "bench"))], CompileSettings())
    compile_s = time.perf_counter() - t0
    print(f"compile once: {compile_s * 1000:.0f} ms ({len(lore.warnings)} warnings)")

    # Key lookup only (all 10 messages), to compare like with like against the naive loop.
    index = lore.indexes[None]
    lookups = []
    for chat in chats:
        t = time.perf_counter()
        text = "\x01" + "\n\x01".join(chat)
        found = index.find(text)
        for kid, starts in found.regex_candidates.items():
            if kid not in found.hits:
                lore.keys[kid].search(text, starts)
        lookups.append(time.perf_counter() - t)

    for label, count in (("estimate", estimate_tokens),
                         ("tiktoken o200k", counter_for("gpt-4o").count)):
        opts = ScanOptions(scan_depth=10, recursive=True, token_budget=800)
        times, activated = [], []
        for chat in chats:
            t = time.perf_counter()
            result = scan(lore, chat, opts, count=count, rng=random.Random(0))
            times.append(time.perf_counter() - t)
            activated.append(len(result.activated))
        times.sort()
        print(f"full scan (depth 10, recursion, budget 800, {label} tokens): "
              f"median {statistics.median(times) * 1000:.3f} ms, "
              f"p95 {times[int(len(times) * 0.95)] * 1000:.3f} ms, "
              f"max {times[-1] * 1000:.3f} ms; {statistics.mean(activated):.1f} entries/turn")

    naive = []
    for chat in chats[: args.naive_turns]:
        t = time.perf_counter()
        naive_scan(book, chat, 10)
        naive.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    entries = precompile(book)
    pre_compile_s = time.perf_counter() - t0
    pre = []
    for chat in chats[: args.naive_turns * 4]:
        t = time.perf_counter()
        naive_precompiled_scan(entries, chat, 10)
        pre.append(time.perf_counter() - t)
    lookups.sort()
    med_lookup, med_naive = statistics.median(lookups), statistics.median(naive)
    med_pre = statistics.median(pre)
    print(f"key matching only (depth 10): indexed median {med_lookup * 1000:.3f} ms")
    print(f"  naive per-entry loop, keys compiled once ({pre_compile_s * 1000:.0f} ms): median "
          f"{med_pre * 1000:.1f} ms ({len(pre)} turns) -> indexed is "
          f"{med_pre / med_lookup:.0f}x faster")
    print(f"  naive per-entry loop, regexes built per key per turn (ST's way): median "
          f"{med_naive * 1000:.0f} ms ({args.naive_turns} turns) -> "
          f"{med_naive / med_lookup:.0f}x")
    same = all(sorted(set(naive_scan(book, c, 10))) == sorted(
        e.uid for e in _primary_hits(lore, c)) == naive_precompiled_scan(entries, c, 10)
        for c in chats[:3])
    print(f"indexed and naive matching agree on sample turns: {same}")


def _primary_hits(lore, chat):  # type: ignore[no-untyped-def]
    """Entries whose keys match (no budget, no recursion): the naive loop's answer."""
    result = scan(lore, chat, ScanOptions(scan_depth=10, recursive=False,
                                          token_budget=10**9), count=lambda _: 0)
    return [a.entry for a in result.activated]


if __name__ == "__main__":
    main()
