"""Memory under clients that do not read (issue 19.3): RSS before, at peak and after.

The reproduction of the issue, end to end: a provider that ignores ``max_tokens``
streams 1.1 MB per reply (its own process), ten clients send ``/api/chat/stream`` and
never read a byte (small receive buffers), ``companion serve`` (its own process) sits in
between. Measured for each LLM client, with the default reply cap (16 characters per
``max_tokens``: 8,192 here) and with the cap raised to 10 M characters (so only the
bounded SSE queue and TCP backpressure hold the reply back):

- engine RSS before, its peak while the ten streams are open (sampled every 100 ms for
  ``--hold`` seconds), and 2 s after the clients closed; goal: < 50 MB growth; then the
  same again (a second round: memory the first kept is reused, not added to);
- how much of each reply the LLM server managed to send (paused = far less than 1.1 MB).

    .venv/bin/python benchmarks/backpressure.py [--clients 10] [--hold 5] [--paths litellm,native]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    EngineProcess,
    LLMServerProcess,
    llm_settings,
    median,
    print_table,
    session,
    stream_chat,
)

TOKEN = "x" * 99 + " "
TOKENS = 11_000  # 1.1 MB


def silent_client(url: str, body: dict[str, object]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    raw = json.dumps(body).encode()
    s.sendall(b"POST /api/chat/stream HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json"
              b"\r\nContent-Length: %d\r\n\r\n%s" % (host.encode(), len(raw), raw))
    return s


async def one(llm: LLMServerProcess, path: str, cap: int | None, clients: int,
              hold: float) -> dict[str, float]:
    extra = {"max_tokens": 512} | ({"max_reply_chars": cap} if cap else {})
    profile = {"llm": llm_settings(llm, native="auto" if path == "native" else "off",
                                   **extra), "speech": {"enabled": False}}
    engine = await EngineProcess(profile).start()
    try:
        await llm.set_default({"tokens": [TOKEN] * 50})
        async with session() as s:  # imports (LiteLLM's), first-turn caches
            warm = await stream_chat(s, engine.url, {"message": "warm up"})
        assert warm.done is not None, (warm.status, warm.error)
        await asyncio.sleep(1.0)
        await llm.set_default({"tokens": [TOKEN] * TOKENS})
        rounds = []
        for _ in range(2):  # the second round shows the steady state
            await llm.clear()
            before = engine.rss_mb()
            socks = [silent_client(engine.url, {"message": f"m{i}"}) for i in range(clients)]
            peak = before
            deadline = time.perf_counter() + hold
            while time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
                peak = max(peak, engine.rss_mb())
            sent = [len(r["sent_at"]) * len(TOKEN) for r in await llm.requests()]
            for s in socks:
                s.close()
            await asyncio.sleep(2.0)
            rounds.append({"before": before, "peak": peak, "after": engine.rss_mb(),
                           "sent": median(sent) if sent else 0.0})
        first, second = rounds
        return {"before": first["before"], "peak": first["peak"], "after": first["after"],
                "peak2": second["peak"], "after2": second["after"], "sent": first["sent"]}
    finally:
        engine.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--hold", type=float, default=5.0)
    ap.add_argument("--paths", default="litellm,native")
    args = ap.parse_args()
    llm = LLMServerProcess()
    rows = []
    try:
        for path in args.paths.split(","):
            for cap, label in ((None, "default (8,192 chars)"), (10_000_000, "10 M chars")):
                r = await one(llm, path, cap, args.clients, args.hold)
                rows.append((path, label, f"{r['before']:.0f} MB", f"{r['peak']:.0f} MB",
                             f"{r['after']:.0f} MB", f"{r['peak'] - r['before']:+.0f} MB",
                             f"{r['peak2']:.0f} MB / {r['after2']:.0f} MB",
                             f"{r['sent'] / 1000:.0f} KB of 1,100 KB"))
    finally:
        llm.stop()
    print(f"{args.clients} clients that never read, 1.1 MB replies, held {args.hold:g} s; "
          f"measured at {time.strftime('%Y-%m-%d %H:%M')}\n")
    print_table(["client", "reply cap", "RSS before", "peak", "after (clients gone)",
                 "growth at peak", "2nd round: peak / after", "sent by the LLM per reply "
                 "(median, 1st round)"], rows)


if __name__ == "__main__":
    asyncio.run(main())
