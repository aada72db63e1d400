"""``GET /-/events``: the server's live status as server-sent events.

A client (the web app's author panel, an editor plugin, a VTuber front end)
keeps one stream open and learns of every reload the moment it happens,
including a rejected one with its ``file:line`` error, without polling
``/health``. The first event describes the current state; each reload (applied
or rejected) sends another. Protected like every ``/-`` route.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from companion_engine import __version__, hookimpl
from companion_engine.chat.sse import KEEPALIVE, KEEPALIVE_S, SSE_HEADERS, encode_event, timestamp
from companion_engine.engine import Engine
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes
from companion_engine.stages import LorebookInjector, Stage

routes = ApiRoutes()

#: Tells EventSource-style clients to reconnect after a second.
RETRY = b"retry: 1000\n\n"
EVENTS_DOC = {"text/event-stream": {"schema": {
    "type": "object",
    "description": "`status` events: {status, version, profile, stages, active_model, "
                   "character, tts, config: {generation, last_reload, last_error, "
                   "restart_required}, timestamp}; `: keep-alive` comments every 15 s. "
                   "The stream does not end by itself. See docs/web.md.",
    "required": ["event", "data"],
    "properties": {"event": {"type": "string", "enum": ["status"]},
                   "data": {"type": "string", "contentMediaType": "application/json"}},
}}}


def _stage(engine: Engine, stage: Stage, kind: str) -> dict[str, Any]:
    info = engine.plugins.stage(kind, stage.name)
    return {"name": stage.name, "plugin": info.plugin if info else None}


def stages(engine: Engine) -> dict[str, Any]:
    """The running pipeline's stages by slot, each with the plugin that provides it."""
    p = engine.pipeline
    return {
        "prompt": [_stage(engine, s, "lorebook_injector" if isinstance(s, LorebookInjector)
                          else "prompt_builder") for s in p.prompt],
        "output": [_stage(engine, s, "sanitizer") for s in p.output],
        "splitter": _stage(engine, p.splitter, "sentence_splitter"),
        "cleaners": [_stage(engine, s, "sanitizer") for s in p.cleaners],
        "tts": _stage(engine, p.tts, "tts_backend"),
    }


def live_status(engine: Engine) -> dict[str, Any]:
    """What ``/health`` says about config and reloads, plus the running profile's stages
    (no provider probe: this must be instant)."""
    status = engine.reload_status
    characters = getattr(engine, "characters", None)
    return {
        "status": "healthy" if status.last_error is None else "degraded",
        "version": __version__,
        "profile": engine.profile.name,
        "stages": stages(engine),
        "active_model": engine.active_model,
        "character": characters.active_id if characters is not None else None,
        "tts": {"engine": engine.pipeline.tts.name, "enabled": engine.profile.speech.enabled},
        "config": status.as_dict(),
        "timestamp": timestamp(),
    }


async def _next_change(engine: Engine, changed: asyncio.Event, within: float) -> None:
    """Return when the status changed, the server is closing, or ``within`` seconds passed."""
    waits = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(engine.closing.wait())]
    try:
        await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        for w in waits:
            with contextlib.suppress(asyncio.CancelledError):
                await w


@routes.get("/-/events", response_content=EVENTS_DOC, tags=["introspection"], errors=(401,),
            summary="Live status (SSE): every reload and its error, as it happens",
            # Endless by design: API fuzzers must not wait for it to finish.
            extensions={"x-endless": True})
async def events(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    try:
        await response.write(RETRY)
        while not engine.closing.is_set():
            changed = engine.status_changed()
            await response.write(encode_event("status", live_status(engine)))
            while not changed.is_set() and not engine.closing.is_set():
                await _next_change(engine, changed, KEEPALIVE_S)
                if not changed.is_set():
                    await response.write(KEEPALIVE)  # also notices a client that left
        await response.write_eof()
    except (ConnectionError, RuntimeError):  # the client left (reset / closing transport)
        pass
    return response


@hookimpl
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    return list(routes)
