"""``GET /api/ws``: one duplex WebSocket per session (protocol in docs/ws.md).

The handshake is checked like any request (origin, host, rate limit, the
per-client stream cap); the API key may come as ``Authorization: Bearer``, as a
``bearer.<key>`` subprotocol next to ``companion.v1`` (what a browser can send),
or in the ``start`` message. A wrong key in the handshake is a 401 before the
upgrade; after it, every problem is a close code with a reason.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from companion_engine import hookimpl
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE, TALK_SESSIONS
from companion_engine.openapi import ApiRoutes
from companion_engine.security import (
    api_key_required,
    bearer_token,
    check_api_key,
    client_ip,
    client_key,
)
from companion_engine.talk import protocol
from companion_engine.talk.session import TalkSession

routes = ApiRoutes()

#: Seconds between WebSocket pings (a peer that stops answering is closed).
HEARTBEAT_S = 30

HANDSHAKE_HEADERS = {
    "Upgrade": {"required": True, "schema": {"type": "string", "const": "websocket"}},
    "Sec-WebSocket-Protocol": {
        "required": False, "schema": {"type": "string"},
        "description": "`companion.v1`, optionally with `bearer.<server.api_key>` (browsers "
                       "cannot set Authorization on a WebSocket)"},
}


def subprotocol_key(request: web.Request) -> str | None:
    """The key of a ``bearer.<key>`` subprotocol the client offered, if any."""
    offered = request.headers.getall("Sec-WebSocket-Protocol", [])
    for item in (p.strip() for header in offered for p in header.split(",")):
        if item.startswith(protocol.BEARER_PREFIX) and len(item) > len(protocol.BEARER_PREFIX):
            return item[len(protocol.BEARER_PREFIX):]
    return None


async def handshake_authenticated(request: web.Request) -> bool:
    """True when no key is needed or the handshake carried the right one; a wrong one is a
    401 (429 after many); False leaves it to the ``start`` message."""
    if not api_key_required(request.app[ENGINE].config):
        return True
    given = bearer_token(request) or subprotocol_key(request)
    if given is None:
        return False
    await check_api_key(request, given)
    return True


@routes.get("/api/ws", tags=["talk"], ok_status=101, headers=HANDSHAKE_HEADERS,
            summary="Duplex WebSocket: speech in, reply and audio out, barge-in",
            description="Client: JSON `start`, `text`, `interrupt`, `config`, `ping` and "
                        "binary PCM16 16 kHz mono microphone frames. Server: "
                        "`{type, data}` JSON (the chat stream's events plus `ready`, `vad`, "
                        "`transcript_partial`, `transcript`, `audio_start`, `audio_end`, "
                        "`interrupted`, `pong`) and binary PCM16 reply audio. See docs/ws.md.",
            errors=(400, 503))
async def websocket(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    limits = engine.config.server.websocket
    ws = web.WebSocketResponse(protocols=(protocol.SUBPROTOCOL,), heartbeat=HEARTBEAT_S,
                               max_msg_size=2 * limits.max_frame_bytes, compress=False)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "GET /api/ws is a WebSocket: connect with a WebSocket client "
                            "(Upgrade: websocket); see docs/ws.md")
    authenticated = await handshake_authenticated(request)
    await ws.prepare(request)
    config = engine.config
    session = TalkSession(engine, request, ws,
                          client=client_key(client_ip(request, config.server.trusted_proxies)),
                          authenticated=authenticated)
    sessions = request.app[TALK_SESSIONS]
    sessions.add(session)
    try:
        await session.run()
    finally:
        sessions.discard(session)
    return ws


@hookimpl
def register_routes(engine: Any) -> list[web.AbstractRouteDef]:
    return list(routes)
