"""``POST /api/chat/stream`` (SSE) and ``POST /api/chat`` (one JSON reply): the same turn."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from companion_engine import hookimpl
from companion_engine.chat.request import ChatRequest
from companion_engine.chat.runner import TurnResult, TurnRunner
from companion_engine.chat.sse import SSEWriter, timestamp
from companion_engine.chat.turns import make_turn
from companion_engine.engine import Engine
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, json_response, read_body
from companion_engine.speech import formats

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


class ChatReply(BaseModel):
    success: bool
    content: str
    provider: str
    model: str
    usage: dict[str, Any] | None
    conversation_id: str | None
    finish_reason: str | None = None
    timestamp: str


async def _runner(engine: Engine, pipeline: Any, req: ChatRequest, *, speak: bool) -> TurnRunner:
    turn = await make_turn(engine, pipeline, req)
    runner = TurnRunner(engine, pipeline, turn, speak=speak,
                        store_history=req.message is not None)
    await runner.prepare()
    return runner


@routes.post("/api/chat/stream", body=ChatRequest, response_content=SSE_DOC, tags=["chat"],
             summary="A streaming chat turn (server-sent events)", errors=(400, 404, 413, 422, 429))
async def chat_stream(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    req = await read_body(request, ChatRequest)
    async with engine.lease() as pipeline:
        speak = req.enable_tts if req.enable_tts is not None else pipeline.profile.speech.enabled
        if speak and req.audio_format:
            why = formats.unavailable(req.audio_format)
            if why is not None:
                raise ApiError(422, why)
        runner = await _runner(engine, pipeline, req, speak=speak)
        writer = await SSEWriter.open(request)
        await runner.stream_to(writer)
        await writer.close()
    return writer.response


@routes.post("/api/chat", body=ChatRequest, response=ChatReply, tags=["chat"],
             summary="A chat turn answered as one JSON reply",
             errors=(400, 404, 413, 422, 429, 500, 502, 503, 504))
async def chat(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    req = await read_body(request, ChatRequest)
    async with engine.lease() as pipeline:
        runner = await _runner(engine, pipeline, req, speak=False)
        result: TurnResult = await runner.run(_discard)
    if result.error is not None:
        raise ApiError(ERROR_STATUS.get(result.error["type"], 502), result.error["error"],
                       detail=result.error)
    return json_response({
        "success": True, "content": result.content, "provider": runner.provider,
        "model": runner.turn.model, "usage": result.usage,
        "conversation_id": runner.turn.conversation_id, "finish_reason": result.finish_reason,
        "timestamp": timestamp(),
    })


async def _discard(event: str, data: dict[str, Any]) -> None:
    """``/api/chat`` sends no events: the reply is the result."""


@hookimpl
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    return list(routes)
