"""``POST /api/chat/stream`` (SSE) and ``POST /api/chat`` (one JSON reply): the same turn —
in a group chat, the same turns (one per speaker)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from companion_engine import hookimpl
from companion_engine.chat.request import ChatRequest
from companion_engine.chat.respond import run_turns, stream_turns, wants_speech
from companion_engine.chat.runner import TurnResult, TurnRunner
from companion_engine.chat.sse import timestamp
from companion_engine.chat.turns import chat_turns
from companion_engine.engine import Engine
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, json_response, read_body

routes = ApiRoutes()

#: HTTP status of ``/api/chat`` for each turn error type.
ERROR_STATUS = {"provider_offline": 503, "provider_error": 502, "timeout": 504,
                "stage_error": 500, "bad_request": 400, "store_unavailable": 503}

#: OpenAPI 3.1: ``schema`` of ``text/event-stream`` describes one event.
SSE_DOC = {"text/event-stream": {"schema": {
    "type": "object",
    "description": "Events provider_connected, content, audio_ready (or audio_chunk), "
                   "audio_error, done or error; each `event: NAME` + `data: <one-line JSON>`. "
                   "See docs/chat.md.",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["provider_connected", "content", "audio_ready",
                                             "audio_chunk", "audio_error", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    }}}}


class SpeakerReply(BaseModel):
    """One speaker's reply in a group chat."""

    character_id: str | None
    character: str | None
    content: str
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class ChatReply(BaseModel):
    success: bool
    content: str
    provider: str
    model: str
    usage: dict[str, Any] | None
    conversation_id: str | None
    finish_reason: str | None = None
    #: A group chat: every speaker's reply, in order (``content`` is the first one's).
    replies: list[SpeakerReply] | None = None
    timestamp: str


@routes.post("/api/chat/stream", body=ChatRequest, response_content=SSE_DOC, tags=["chat"],
             summary="A streaming chat turn (server-sent events)", errors=(400, 404, 413, 422, 429))
async def chat_stream(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    req = await read_body(request, ChatRequest)
    async with engine.lease() as pipeline:
        speak = wants_speech(pipeline, req.enable_tts, req.audio_format)
        return await stream_turns(request, engine, pipeline,
                                  chat_turns(engine, pipeline, req), speak=speak)


@routes.post("/api/chat", body=ChatRequest, response=ChatReply, tags=["chat"],
             summary="A chat turn answered as one JSON reply",
             errors=(400, 404, 413, 422, 429, 500, 502, 503, 504))
async def chat(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    req = await read_body(request, ChatRequest)
    async with engine.lease() as pipeline:
        done = await run_turns(engine, pipeline, chat_turns(engine, pipeline, req))
    runner, result = done[0]
    if result.error is not None:
        raise ApiError(ERROR_STATUS.get(result.error["type"], 502), result.error["error"],
                       detail=result.error)
    body: dict[str, Any] = {
        "success": True, "content": result.content, "provider": runner.provider,
        "model": runner.turn.model, "usage": result.usage,
        "conversation_id": runner.turn.conversation_id, "finish_reason": result.finish_reason,
        "timestamp": timestamp(),
    }
    if len(done) > 1 or (runner.kind is not None and runner.kind.group):
        body["replies"] = [speaker_reply(r, res) for r, res in done]
    return json_response(body)


def speaker_reply(runner: TurnRunner, result: TurnResult) -> dict[str, Any]:
    card = runner.turn.character
    return {"character_id": card.id if card else None,
            "character": card.display_name if card else None, "content": result.content,
            "finish_reason": result.finish_reason, "usage": result.usage,
            "error": result.error}


@hookimpl
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    return list(routes)
