"""Diagnostic (in process): the conversation store's work per chat turn.

A server-managed turn reads its conversation, stores the user's message (before the
LLM call) and stores the reply (after it). This times those three calls against a
real SQLite file and a real ``redis-server`` (started here on a free port), for
conversations of growing length, an edit (``edit_message`` with a version check), a
branch, and a cold read (a store that never saw the conversation: another process,
a restart; the warm turn reads one number, the cold read every message). Median of
``--repeat`` turns per point. Not an end-to-end benchmark: the engine's turn as a user
pays for it is measured by the bench package's benchmarks; this says which part of it
the store is.

    .venv/bin/python benchmarks/store_turn.py [--repeat 50] [--lengths 10,500,2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from companion_engine.store import Store, StoredMessage, open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fill(store: Store, cid: str, n: int) -> None:
    for i in range(0, n, 2):
        await store.append_messages(cid, [
            StoredMessage("user", f"message {i} " * 15, meta={"user_name": "U"}),
            StoredMessage("assistant", f"a reply {i} " * 30, meta={"model": "m"})],
            character_id="c")


async def turn(store: Store, cid: str) -> float:
    start = time.perf_counter()
    await store.get_conversation(cid)
    await store.append_messages(cid, [StoredMessage("user", "hello " * 15)], character_id="c")
    await store.append_messages(cid, [StoredMessage("assistant", "a reply " * 30)],
                                character_id="c")
    return (time.perf_counter() - start) * 1000


async def edit(store: Store, cid: str) -> float:
    conv = await store.get_conversation(cid)
    assert conv is not None
    start = time.perf_counter()
    await store.edit_message(cid, 1, "edited", expected_version=conv.version)
    return (time.perf_counter() - start) * 1000


async def branch(store: Store, cid: str, i: int) -> float:
    start = time.perf_counter()
    await store.branch(cid, 5, new_id=f"{cid}-b{i}")
    return (time.perf_counter() - start) * 1000


async def cold(reopen: Callable[[], Awaitable[Store]], cid: str) -> float:
    """A read by a store that has not seen the conversation (another process, a restart)."""
    other = await reopen()
    try:
        start = time.perf_counter()
        await other.get_conversation(cid)
        return (time.perf_counter() - start) * 1000
    finally:
        await other.close()


async def measure(name: str, store: Store, reopen: Callable[[], Awaitable[Store]],
                  lengths: list[int], repeat: int) -> None:
    for n in lengths:
        cid = f"{name}-{n}"
        await fill(store, cid, n)
        turns = [await turn(store, cid) for _ in range(repeat)]
        edits = [await edit(store, cid) for _ in range(repeat)]
        branches = [await branch(store, cid, i) for i in range(min(repeat, 20))]
        colds = [await cold(reopen, cid) for _ in range(min(repeat, 10))]
        print(f"{name:6} {n:5} messages: turn {statistics.median(turns):6.2f} ms "
              f"(read + 2 appends)   edit {statistics.median(edits):6.2f} ms   "
              f"branch at 5 {statistics.median(branches):6.2f} ms   "
              f"cold read {statistics.median(colds):6.2f} ms")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--lengths", default="10,500,2000")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    tmp = Path(tempfile.mkdtemp())
    sqlite = await open_store("sqlite:///bench.db", tmp)
    try:
        await measure("sqlite", sqlite, lambda: open_store("sqlite:///bench.db", tmp), lengths,
                      args.repeat)
    finally:
        await sqlite.close()
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server not installed: Redis not measured")
        return
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        redis = await open_store(url, tmp)
        try:
            await measure("redis", redis, lambda: open_store(url, tmp), lengths, args.repeat)
        finally:
            await redis.close()
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
