"""The SSE writer on a real socket: batching, loss notification, keep-alive reuse, timestamps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp
import pytest
from aiohttp import web

from companion_engine.chat import sse
from companion_engine.testing import free_port
from tests.chat_helpers import parse_sse


@pytest.fixture
async def sse_server() -> AsyncIterator[tuple[str, dict[str, object]]]:
    """``/burst?n=N`` sends N events without yielding; ``/wait`` waits for the client
    to leave. ``seen`` records what the handlers observed."""
    seen: dict[str, object] = {}

    async def burst(request: web.Request) -> web.StreamResponse:
        writer = await sse.SSEWriter.open(request)
        for i in range(int(request.query["n"])):
            await writer.send("content", {"i": i, "text": "x" * 10})
        await writer.close()
        return writer.response

    async def wait(request: web.Request) -> web.StreamResponse:
        writer = await sse.SSEWriter.open(request)
        gone = asyncio.Event()
        watcher = asyncio.create_task(writer.watch(gone.set))
        await writer.send("content", {"ready": True})
        await asyncio.wait_for(gone.wait(), 5)
        seen["noticed"] = True
        await watcher
        await writer.close()
        return writer.response

    app = web.Application()
    app.router.add_get("/burst", burst)
    app.router.add_get("/wait", wait)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_events_ready_together_leave_in_one_write(
    sse_server: tuple[str, dict[str, object]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = sse_server
    writes: list[int] = []
    original = web.StreamResponse.write

    async def counting(self: web.StreamResponse, data: bytes) -> None:
        writes.append(len(data))
        await original(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", counting)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/burst", params={"n": "200"}) as resp:
            events = parse_sse(await resp.text())
        assert [d["i"] for _, d in events] == list(range(200))
        assert len(writes) == 1, writes
        # the connection is kept alive and serves the next request as usual (the loss
        # watch stood aside when the stream ended)
        async with session.get(f"{url}/burst", params={"n": "3"}) as resp:
            assert [d["i"] for _, d in parse_sse(await resp.text())] == [0, 1, 2]
        assert session.connector is not None


async def test_a_client_leaving_is_noticed_without_a_write(
    sse_server: tuple[str, dict[str, object]],
) -> None:
    url, seen = sse_server
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{url}/wait")
        await resp.content.readuntil(b"\n\n")
        resp.close()
    for _ in range(100):
        if seen.get("noticed"):
            break
        await asyncio.sleep(0.02)
    assert seen.get("noticed") is True


def test_timestamps_are_iso_8601_utc_like_datetime_isoformat() -> None:
    for _ in range(1000):
        stamp = sse.timestamp()
        parsed = datetime.fromisoformat(stamp)
        assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0
        assert stamp.endswith("+00:00")
        assert abs((datetime.now(parsed.tzinfo) - parsed).total_seconds()) < 1
        assert len(stamp) in (25, 32)  # with or without microseconds, as isoformat()
