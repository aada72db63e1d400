"""A WebSocket client for the ``/api/ws`` tests, on the ``websockets`` library (not ours).

Every JSON message the server sends is checked against the protocol's JSON schema
(``companion_engine.talk.protocol.json_schema``) as it arrives, so the tests keep
docs/ws.md honest about every message they see.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from companion_engine.talk.protocol import json_schema
from tests.talk_helpers import frames

_SCHEMA = json_schema()
_VALIDATOR = jsonschema.Draft202012Validator(
    {**_SCHEMA, "$ref": "#/$defs/ServerMessage"})


@dataclass
class Received:
    """One message from the server, with when it arrived."""

    at: float
    type: str  # a JSON message's type, or "binary"
    data: Any  # its ``data``, or the bytes

    def __repr__(self) -> str:
        if self.type == "binary":
            return f"<binary {len(self.data)} B>"
        return f"<{self.type} {json.dumps(self.data)[:120]}>"


@dataclass
class WS:
    conn: ClientConnection
    log: list[Received] = field(default_factory=list)
    _pos: int = 0

    async def send(self, kind: str, **fields: Any) -> None:
        await self.conn.send(json.dumps({"type": kind, **fields}))

    async def start(self, **fields: Any) -> dict[str, Any]:
        await self.send("start", **fields)
        return (await self.until("ready")).data

    async def audio(self, pcm: bytes, ms: int = 20, *, realtime: float = 0.0) -> None:
        """Send PCM16 16 kHz as a microphone does (``realtime``: that fraction of real time)."""
        for frame in frames(pcm, ms):
            await self.conn.send(frame)
            if realtime:
                await asyncio.sleep(ms / 1000 * realtime)

    async def recv(self, within: float = 10) -> Received:
        raw = await asyncio.wait_for(self.conn.recv(), within)
        now = time.perf_counter()
        if isinstance(raw, bytes):
            item = Received(now, "binary", raw)
        else:
            message = json.loads(raw)
            _VALIDATOR.validate(message)
            item = Received(now, message["type"], message["data"])
        self.log.append(item)
        return item

    async def until(self, kind: str, within: float = 15, **match: Any) -> Received:
        """Read until a message of ``kind`` (whose data has ``match``); earlier ones are logged."""
        deadline = time.monotonic() + within
        while True:
            for item in self.log[self._pos:]:
                self._pos += 1
                if item.type == kind and all(item.data.get(k) == v for k, v in match.items()):
                    return item
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                await self.recv(left)
            except TimeoutError:
                raise AssertionError(f"no {kind} {match or ''} within {within} s; got "
                                     f"{self.log[-12:]}") from None

    async def closed(self, within: float = 10) -> tuple[int | None, str]:
        """Read until the server closes; its close code and reason."""
        try:
            while True:
                await self.recv(within)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, "")

    def types(self) -> list[str]:
        return [r.type for r in self.log]

    def since(self, item: Received) -> list[Received]:
        return self.log[self.log.index(item) + 1:]


def ws_url(client: Any, path: str = "/api/ws") -> str:
    return str(client.server.make_url(path)).replace("http://", "ws://")


async def open_ws(client: Any, *, subprotocols: list[str] | None = None,
                  headers: dict[str, str] | None = None) -> WS:
    conn = await connect(ws_url(client), subprotocols=subprotocols or ["companion.v1"],  # type: ignore[arg-type]
                         additional_headers=headers, max_size=2**24, open_timeout=10)
    return WS(conn)
