"""Server-sent events: one-line JSON per ``data:``, one writer per stream, keep-alive.

Events come from more than one task (the token loop, the speech sender). ``send()``
encodes an event and queues it; the stream's sender task writes everything queued
in one socket write as soon as the producers yield to the event loop, so tokens
that arrive together from the LLM leave together (one ``write`` instead of one per
token). The queue is bounded: while the client does not read and more than
``MAX_PENDING_BYTES`` wait, ``send()`` waits too, so the token loop stops pulling
from the LLM instead of buffering without end; a client that reads nothing for
``STALL_S`` is dropped.

A client that goes away is noticed the moment its connection is lost, not by
polling: while the stream is open, a thin protocol (``_LossWatch``) stands between
the connection's transport and aiohttp's own, forwarding everything and reporting
``connection_lost``. ``watch()`` turns that into a callback (the chat runner
cancels the turn, which closes the LLM request at once). Keep-alive comments and
the stall check share one timer per stream.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from loguru import logger

#: Seconds without any event before a keep-alive comment is written.
KEEPALIVE_S = 15.0
#: Bytes of encoded events that may wait for a slow client before ``send()`` waits too.
MAX_PENDING_BYTES = 64 * 1024
#: Seconds a client may read nothing while events wait before the stream is dropped.
STALL_S = 30.0
KEEPALIVE = b": keep-alive\n\n"

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}

_json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_orjson_dumps = orjson.dumps


def _dumps(data: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as ``json`` writes it, made by orjson where that is the same.

    The stdlib writes what orjson refuses (huge ints, lone surrogates) or writes
    otherwise (a non-finite float: ``Infinity``, where orjson writes ``null``). Both
    escape every control character, so the result is one line.
    """
    try:
        out = _orjson_dumps(data)
    except TypeError:
        return _json_dumps(data).encode("utf-8", "surrogatepass")
    if b"null" in out and _non_finite(data):
        return _json_dumps(data).encode("utf-8", "surrogatepass")
    return out


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


def encode_json(value: Any) -> bytes:
    """One value as the events' JSON (``_dumps``): e.g. a token's text alone, for a
    frame whose JSON around it was encoded once."""
    return _dumps(value)


def encode_data(data: dict[str, Any]) -> bytes:
    """``data: <one-line JSON>\n\n`` with no ``event:`` line (OpenAI's stream format)."""
    return b"data: %s\n\n" % _dumps(data)


def encode_event(event: str, data: dict[str, Any]) -> bytes:
    """``event: NAME\\ndata: <one-line JSON>\\n\\n``; JSON escapes every newline."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), _dumps(data))


_stamp_second = -1
_stamp_prefix = ""


def timestamp() -> str:
    """ISO 8601 in UTC, as every other response of the server (``datetime.isoformat``).

    The date and time of day are formatted once per second; only the microseconds
    are formatted per call (timestamps go on every streamed event).
    """
    global _stamp_second, _stamp_prefix
    now = time.time()
    second = int(now)
    if second != _stamp_second:
        _stamp_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _stamp_second = second
    micro = int((now - second) * 1_000_000)
    return f"{_stamp_prefix}.{micro:06d}+00:00" if micro else f"{_stamp_prefix}+00:00"


class ClientGone(Exception):
    """The client closed the connection; the turn ends as interrupted."""


class _LossWatch(asyncio.Protocol):
    """Forwards a connection's protocol calls to aiohttp's handler; reports its loss."""

    __slots__ = ("inner", "on_lost")

    def __init__(self, inner: Any, on_lost: Callable[[], None]) -> None:
        self.inner = inner
        self.on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self.on_lost()


class SSEWriter:
    """Writes events to one prepared ``StreamResponse`` through a bounded queue."""

    def __init__(self, request: web.Request, response: web.StreamResponse,
                 keepalive_s: float | None = None) -> None:
        self.request = request
        self.response = response
        self.keepalive_s = KEEPALIVE_S if keepalive_s is None else keepalive_s
        self.last_write = time.monotonic()
        self.gone = False
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._wake: asyncio.Future[None] | None = None  # the sender waits for events
        self._room: asyncio.Future[None] | None = None  # a producer waits for room
        self._writing_since: float | None = None
        self._closing = False
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._sender: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watch: _LossWatch | None = None
        self._watch_connection()

    @classmethod
    async def open(cls, request: web.Request, keepalive_s: float | None = None) -> SSEWriter:
        """Send the response headers. A client already gone is no error: the writer
        starts out ``gone`` and the turn ends as interrupted, quietly."""
        response = web.StreamResponse(headers=SSE_HEADERS)
        try:
            await response.prepare(request)
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("client left before the stream opened: {}", exc)
            writer = cls(request, response, keepalive_s)
            writer._mark_gone()
            return writer
        return cls(request, response, keepalive_s)

    # --- connection loss ------------------------------------------------------------------

    def _watch_connection(self) -> None:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            self._mark_gone()
            return
        inner = transport.get_protocol()
        # aiohttp's protocol is a plain one; a buffered one (not seen) would learn of a
        # loss only from the next write, as aiohttp itself reports it.
        if not isinstance(inner, asyncio.BufferedProtocol):
            self._watch = _LossWatch(inner, self._mark_gone)
            transport.set_protocol(self._watch)
        self._arm_timer(self.keepalive_s)

    def _unwatch_connection(self) -> None:
        watch, self._watch = self._watch, None
        transport = self.request.transport
        if watch is not None and transport is not None and transport.get_protocol() is watch:
            transport.set_protocol(watch.inner)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _mark_gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        if not self._lost.done():
            self._lost.set_result(None)
        for waiter in (self._wake, self._room):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def connected(self) -> bool:
        transport = self.request.transport
        return not self.gone and transport is not None and not transport.is_closing()

    async def watch(self, on_gone: Callable[[], None]) -> None:
        """Call ``on_gone`` as soon as the client has left (awaits the loss; no polling)."""
        await self._lost
        on_gone()

    # --- keep-alive and stalls: one timer per stream ----------------------------------------

    def _arm_timer(self, delay: float) -> None:
        self._timer = self._loop.call_later(max(delay, 0.001), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.gone:
            return
        now = time.monotonic()
        if self._writing_since is not None and now - self._writing_since >= STALL_S:
            logger.info("client read nothing for {:.0f} s; dropping its stream", STALL_S)
            transport = self.request.transport
            if transport is not None:
                transport.abort()  # connection_lost follows: the turn ends as interrupted
            self._mark_gone()
            return
        idle = now - self.last_write
        if (idle >= self.keepalive_s and not self._pending and self._writing_since is None
                and not self._closing):
            self._queue(KEEPALIVE)
            idle = 0.0
        next_check = self.keepalive_s - idle
        if self._writing_since is not None:
            next_check = min(next_check, STALL_S - (now - self._writing_since))
        self._arm_timer(next_check)

    # --- sending ----------------------------------------------------------------------------

    async def send(self, event: str, data: dict[str, Any]) -> None:
        """Queue one event; raises ``ClientGone`` when the client has left. Waits (the
        caller stops producing) while the client is too far behind."""
        await self.send_bytes(encode_event(event, data))

    async def send_bytes(self, payload: bytes) -> None:
        """Queue pre-encoded SSE lines (another wire format: OpenAI's ``data:`` lines),
        with the same backpressure as ``send``."""
        if self.gone:
            raise ClientGone()
        self._queue(payload)
        if self._pending_bytes > MAX_PENDING_BYTES:
            await self._wait_for_room()

    def _queue(self, payload: bytes) -> None:
        self._pending.append(payload)
        self._pending_bytes += len(payload)
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)
        elif self._sender is None:
            self._sender = self._loop.create_task(self._send_loop(), name="sse-send")

    async def _wait_for_room(self) -> None:
        while self._pending_bytes > MAX_PENDING_BYTES and not self.gone:
            if self._room is None or self._room.done():
                self._room = self._loop.create_future()
            await self._room
        if self.gone:
            raise ClientGone()

    async def _send_loop(self) -> None:
        """Write whatever is queued, one write per batch, until closed or gone."""
        response = self.response
        try:
            while not self.gone:
                if not self._pending:
                    if self._closing:
                        return
                    self._wake = self._loop.create_future()
                    await self._wake
                    continue
                batch = self._pending
                self._pending = []
                self._pending_bytes = 0
                room = self._room
                if room is not None and not room.done():
                    room.set_result(None)
                self._writing_since = time.monotonic()
                await response.write(batch[0] if len(batch) == 1 else b"".join(batch))
                self._writing_since = None
                self.last_write = time.monotonic()
        except (ConnectionError, RuntimeError) as exc:  # reset / closing transport
            logger.debug("client connection lost while writing: {}", exc)
            self._mark_gone()

    async def close(self) -> None:
        """Write what is queued and end the response (bounded by the stall check)."""
        self._closing = True
        sender = self._sender
        if sender is not None:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
            try:
                await sender
            finally:
                self._sender = None
        if not self.gone:
            try:
                await self.response.write_eof()
            except (ConnectionError, RuntimeError):
                self.gone = True
        self._unwatch_connection()
