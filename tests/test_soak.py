"""Soak: a few hundred mixed requests, some malformed, some dropped mid-stream, in parallel.

Against the real app on a real socket and the scripted LLM server, in this
event loop so leaked tasks are visible. A warm-up round first brings every pool
and cache to its working size; then the soak round must end with: no 5xx, no
task left behind, no file descriptor more than after the warm-up, every
upstream LLM request closed (dropped streams cancel it), the SQLite file passing
``PRAGMA integrity_check``, every finished conversation stored whole, and the
characters folder holding exactly the cards that were created and not deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from companion_engine.app import create_app
from companion_engine.keys import ENGINE
from companion_engine.store.sqlite import sqlite_path
from companion_engine.testing import LLMTestServer, Script
from tests.security_helpers import write_project

pytestmark = pytest.mark.slow

TOKENS = ["Sure", ", ", "I", " can", " help", ". ", "Here", " it", " is", ". ", "Bye", "!"]
REPLY = "".join(TOKENS)
CONCURRENCY = 16
WARMUP, SOAK = 80, 320


def _socket_inodes(port: int) -> set[str]:
    """Inodes of TCP sockets with ``port`` at either end (from /proc/net/tcp and tcp6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                cols = row.split()
                local, remote, inode = cols[1], cols[2], cols[9]
                if int(local.rsplit(":", 1)[1], 16) == port or \
                        int(remote.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def open_fds(llm_port: int) -> int:
    """Open descriptors, not counting connections to the scripted LLM server: LiteLLM's
    HTTP pool keeps a few of those alive, as many as the load last needed."""
    pooled = {f"socket:[{inode}]" for inode in _socket_inodes(llm_port)}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while listing (the listing's own descriptor)
        count += target not in pooled
    return count


@dataclass
class Tally:
    """What the load did, for the checks at the end."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    conversations: list[str] = field(default_factory=list)
    created: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)

    def record(self, kind: str, status: int, detail: str = "") -> None:
        self.statuses[(kind, status)] += 1
        if status >= 500:
            self.server_errors.append(f"{kind}: {status} {detail[:300]}")


Action = Callable[[aiohttp.ClientSession, str, Tally, int], Awaitable[None]]


async def _request(http: aiohttp.ClientSession, tally: Tally, kind: str, method: str, url: str,
                   expect: tuple[int, ...], **kwargs: object) -> str:
    async with http.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
        text = await resp.text(errors="replace")
        tally.record(kind, resp.status, text)
        assert resp.status in expect, (kind, resp.status, text[:300])
        return text


async def chat_json(http: aiohttp.ClientSession, base: str, tally: Tally, i: int) -> None:
    conv = f"soak-{i}"
    text = await _request(http, tally, "chat", "POST", f"{base}/api/chat", (200,),
                          json={"message": f"hello {i}", "conversation_id": conv})
    assert json.loads(text)["content"] == REPLY
    tally.conversations.append(conv)


async def chat_stream(http: aiohttp.ClientSession, base: str, tally: Tally, i: int) -> None:
    body = {"messages": [{"role": "user", "content": f"stream {i}"}]}
    async with http.post(f"{base}/api/chat/stream", json=body) as resp:
        tally.record("stream", resp.status)
        assert resp.status == 200
        raw = await resp.text()
    events = [line.split(": ", 1)[1] for line in raw.splitlines() if line.startswith("event: ")]
    assert events[0] == "provider_connected" and events[-1] == "done", events


async def chat_stream_dropped(http: aiohttp.ClientSession, base: str, tally: Tally,
                              i: int) -> None:
    body = {"message": f"drop {i}", "conversation_id": f"dropped-{i}"}
    async with http.post(f"{base}/api/chat/stream", json=body) as resp:
        tally.record("dropped", resp.status)
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"event: content"):
                break
        resp.close()  # the client goes away mid-stream


def broken_png_form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", b"\x89PNG\r\n\x1a\nbroken", filename="broken.png",
                   content_type="image/png")
    return form


async def malformed(http: aiohttp.ClientSession, base: str, tally: Tally, i: int) -> None:
    cases: list[tuple[str, str, dict[str, object], tuple[int, ...]]] = [
        ("POST", "/api/chat", {"data": b"{not json"}, (400,)),
        ("POST", "/api/chat", {"json": {"messages": "nope"}}, (422,)),
        ("POST", "/api/chat", {"json": {"message": "x", "model": "bad model!"}}, (422,)),
        ("POST", "/api/chat/stream", {"json": [1, 2, 3]}, (400, 422)),
        ("POST", "/api/chat", {"data": b'{"message": "' + b"a" * (2 << 20) + b'"}'}, (413,)),
        ("POST", "/api/prompt/preview", {"data": b"[" * 3000 + b"]" * 3000}, (400,)),
        ("GET", "/api/characters/..%2F..%2Fetc%2Fpasswd", {}, (400, 404)),
        ("GET", "/api/conversations/%00bad", {}, (400, 404)),
        ("POST", "/api/characters/upload", {"data": broken_png_form()}, (400,)),
        ("POST", "/api/characters", {"json": {"name": ""}}, (400, 422)),
        ("DELETE", "/health", {}, (405,)),
        ("GET", "/api/no/such/route", {}, (404,)),
    ]
    method, path, kwargs, expect = cases[i % len(cases)]
    await _request(http, tally, f"malformed {method} {path[:30]}", method, base + path, expect,
                   **kwargs)


async def reads(http: aiohttp.ClientSession, base: str, tally: Tally, i: int) -> None:
    path = ["/", "/health", "/api/status", "/api/characters", "/openapi.json"][i % 5]
    await _request(http, tally, f"GET {path}", "GET", base + path, (200,))


async def characters(http: aiohttp.ClientSession, base: str, tally: Tally, i: int) -> None:
    text = await _request(http, tally, "create", "POST", f"{base}/api/characters", (200, 201),
                          json={"name": f"Soak {i}", "description": "A soak test.",
                                "first_mes": "Hello {{user}}."})
    cid = json.loads(text)["data"]["id"]
    tally.created.add(cid)
    await _request(http, tally, "get", "GET", f"{base}/api/characters/{cid}", (200,))
    if i % 2:
        await _request(http, tally, "delete", "DELETE", f"{base}/api/characters/{cid}", (200,))
        tally.deleted.add(cid)


async def preview(http: aiohttp.ClientSession, base: str, tally: Tally, i: int) -> None:
    await _request(http, tally, "preview", "POST", f"{base}/api/prompt/preview", (200,),
                   json={"message": f"what about {i}?"})


MIX: list[tuple[Action, int]] = [
    (chat_json, 4), (chat_stream, 3), (chat_stream_dropped, 3), (malformed, 6), (reads, 4),
    (characters, 2), (preview, 2),
]


async def run_load(base: str, count: int, seed: int) -> Tally:
    rng = random.Random(seed)
    actions = [a for a, weight in MIX for _ in range(weight)]
    plan = [(rng.choice(actions), seed * 10_000 + i) for i in range(count)]
    tally = Tally()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(action: Action, i: int) -> None:
        async with gate:
            await action(http, base, tally, i)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await asyncio.gather(*(one(a, i) for a, i in plan))
    return tally


def _serves_llm(task: asyncio.Task[object], llm: LLMTestServer) -> bool:
    """A connection task of the scripted LLM server: kept alive by LiteLLM's HTTP pool
    (the client side of the provider connection), which is not ours to close."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    handler = frame.f_locals.get("self") if frame is not None else None
    manager = getattr(handler, "_manager", None)
    return manager is not None and llm.runner is not None and manager is llm.runner.server


async def settle(llm: LLMTestServer, baseline: set[asyncio.Task[object]] | None = None
                 ) -> list[str]:
    """Wait (bounded) until every upstream request closed and, given a baseline, no task
    born since is alive (the LLM server's pooled connections aside); return those alive."""
    me = asyncio.current_task()
    leaked: list[str] = []
    for _ in range(100):
        await asyncio.sleep(0.05)
        open_upstream = [r for r in llm.requests if r.closed_at is None]
        leaked = [] if baseline is None else [
            repr(t.get_coro()) for t in asyncio.all_tasks()
            if t is not me and t not in baseline and not t.done() and not _serves_llm(t, llm)]
        if not open_upstream and not leaked:
            break
    return leaked


async def test_soak(tmp_path: Path, llm_server: LLMTestServer) -> None:
    llm_server.default = Script(tokens=TOKENS, delay_s=0.01)
    config = write_project(
        tmp_path, llm_port=llm_server.port,
        config={"rate_limit": {"requests": 100_000, "window_s": 1},
                "server": {"max_streams_per_ip": CONCURRENCY}})
    app = create_app(config)
    server = TestServer(app)
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        warm = await run_load(base, WARMUP, seed=1)
        assert not warm.server_errors, warm.server_errors
        await settle(llm_server)
        baseline = set(asyncio.all_tasks())
        fds_before = open_fds(llm_server.port)

        tally = await run_load(base, SOAK, seed=2)
        leaked = await settle(llm_server, baseline)
        fds_after = open_fds(llm_server.port)

        assert not tally.server_errors, tally.server_errors
        assert sum(tally.statuses.values()) >= SOAK
        kinds = {kind for kind, _ in tally.statuses}
        assert {"chat", "stream", "dropped", "create"} <= kinds
        assert any(status >= 400 for _, status in tally.statuses)
        assert not leaked, leaked
        assert not [r for r in llm_server.requests if r.closed_at is None]
        assert fds_after <= fds_before, (fds_before, fds_after)

        engine = app[ENGINE]
        for conv in tally.conversations:
            stored = await engine.store.get_conversation(conv)
            assert stored is not None, conv
            assert [(m.role, m.status) for m in stored.messages] == [
                ("user", "complete"), ("assistant", "complete")], conv
            assert stored.messages[1].content == REPLY
        for cid in tally.created - tally.deleted:
            assert engine.characters.get(cid) is not None, cid
        for cid in tally.deleted:
            assert engine.characters.get(cid) is None, cid
        leftovers = [p.name for p in config.path("characters").iterdir()
                     if p.name.startswith(".") or p.suffix in (".tmp", ".part")]
        assert not leftovers, leftovers
    finally:
        await server.close()
    db = sqlite_path(config.store.url, config.base_dir)

    def integrity() -> str:
        with sqlite3.connect(db) as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])

    assert await asyncio.to_thread(integrity) == "ok"


async def test_concurrent_and_cancelled_writes_keep_the_store_whole(tmp_path: Path) -> None:
    """Many turns finishing at once on the one SQLite connection, a third of them cancelled
    mid-write (their clients went away): every conversation is stored whole, none mixed."""
    from companion_engine.store import open_store
    from companion_engine.store.base import StoredMessage

    store = await open_store("sqlite:///data/soak.db", tmp_path)

    async def finish_turn(i: int) -> None:
        await store.append_messages(
            f"c{i}", [StoredMessage("user", f"u{i}"), StoredMessage("assistant", f"a{i}")],
            character_id=None)

    tasks = [asyncio.create_task(finish_turn(i)) for i in range(150)]
    await asyncio.sleep(0)
    for task in tasks[::3]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert not [r for r in results if isinstance(r, Exception)], results
    for i in range(150):
        conv = await store.get_conversation(f"c{i}")
        assert conv is not None, i
        assert [(m.role, m.content) for m in conv.messages] == [("user", f"u{i}"),
                                                                ("assistant", f"a{i}")]
    await store.close()

    def integrity() -> str:
        with sqlite3.connect(tmp_path / "data" / "soak.db") as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])

    assert await asyncio.to_thread(integrity) == "ok"
