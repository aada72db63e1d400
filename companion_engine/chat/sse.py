"""Server-sent events: one-line JSON per ``data:``, one writer per stream, keep-alive.

Events come from more than one task (the token loop, the speech sender), so
every write goes through ``SSEWriter.send`` which serialises them with a lock.
``SSEWriter.watch()`` is the stream's one helper task: it writes a comment
line when nothing was sent for ``keepalive_s`` (proxies and browsers drop
silent connections) and notices a client that went away, cancelling the turn
at once so the LLM request is closed without waiting for the next token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

#: Seconds without any event before a keep-alive comment is written.
KEEPALIVE_S = 15.0
#: How often the watcher checks that the client is still connected.
POLL_S = 0.02
KEEPALIVE = b": keep-alive\n\n"

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_event(event: str, data: dict[str, Any]) -> bytes:
    """``event: NAME\\ndata: <one-line JSON>\\n\\n``; JSON escapes every newline."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), _dumps(data).encode())


def timestamp() -> str:
    """ISO 8601 in UTC, as every other response of the server."""
    return datetime.now(UTC).isoformat()


class ClientGone(Exception):
    """The client closed the connection; the turn ends as interrupted."""


class SSEWriter:
    """Writes events to one prepared ``StreamResponse``, one at a time."""

    def __init__(self, request: web.Request, response: web.StreamResponse,
                 keepalive_s: float | None = None) -> None:
        self.request = request
        self.response = response
        self.keepalive_s = KEEPALIVE_S if keepalive_s is None else keepalive_s
        self.last_write = time.monotonic()
        self.gone = False
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, request: web.Request, keepalive_s: float | None = None) -> SSEWriter:
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        return cls(request, response, keepalive_s)

    def connected(self) -> bool:
        transport = self.request.transport
        return not self.gone and transport is not None and not transport.is_closing()

    async def send(self, event: str, data: dict[str, Any]) -> None:
        """Write one event; raises ``ClientGone`` when the client has left."""
        await self._write(encode_event(event, data))

    async def _write(self, payload: bytes) -> None:
        if self.gone:
            raise ClientGone()
        async with self._lock:
            try:
                await self.response.write(payload)
            except (ConnectionError, RuntimeError) as exc:  # reset / closing transport
                self.gone = True
                raise ClientGone() from exc
        self.last_write = time.monotonic()

    async def watch(self, on_gone: Callable[[], None]) -> None:
        """Keep the stream alive; call ``on_gone`` as soon as the client has left."""
        while True:
            await asyncio.sleep(POLL_S)
            if not self.connected():
                self.gone = True
                on_gone()
                return
            if time.monotonic() - self.last_write >= self.keepalive_s and not self._lock.locked():
                try:
                    await self._write(KEEPALIVE)
                except ClientGone:
                    on_gone()
                    return

    async def close(self) -> None:
        if not self.gone:
            try:
                await self.response.write_eof()
            except (ConnectionError, RuntimeError):
                self.gone = True
