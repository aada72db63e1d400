"""``POST /api/chat/stream`` (SSE) and ``POST /api/chat`` (one JSON reply): the same turn —
in a group chat, the same turns (one per speaker).

Either takes JSON, or a spoken message: a multipart form with an ``audio`` part
(plus the JSON fields as form fields), transcribed by the profile's
``speech.stt`` first; its ``transcript`` is then the stream's first event (and a
field of the JSON reply).
"""

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
from companion_engine.openapi import (
    ApiRoutes,
    json_response,
    parse_model,
    read_body,
    without_null,
)
from companion_engine.stages import Transcript
from companion_engine.talk.transcription import (
    AUDIO_FORM,
    AudioUpload,
    is_upload,
    read_audio_upload,
    transcribe_upload,
)
from companion_engine.turn import Turn

routes = ApiRoutes()

#: HTTP status of ``/api/chat`` for each turn error type.
ERROR_STATUS = {"provider_offline": 503, "provider_error": 502, "timeout": 504,
                "stage_error": 500, "bad_request": 400, "store_unavailable": 503}

#: OpenAPI 3.1: ``schema`` of ``text/event-stream`` describes one event.
SSE_DOC = {"text/event-stream": {"schema": {
    "type": "object",
    "description": "Events transcript (spoken requests), provider_connected, content, "
                   "audio_ready (or audio_chunk), audio_error, done or error; each "
                   "`event: NAME` + `data: <one-line JSON>`. See docs/chat.md.",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["transcript", "provider_connected", "content",
                                             "audio_ready", "audio_chunk", "audio_error",
                                             "done", "error"]},
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
    #: What the speech recognition heard, for a spoken request.
    transcript: dict[str, Any] | None = None
    timestamp: str


#: The form of a spoken chat request: the audio and the JSON fields as form fields.
_AUDIO = AUDIO_FORM["multipart/form-data"]["schema"]
SPOKEN_FORM = {"multipart/form-data": {"schema": {
    **_AUDIO,
    "properties": {**_AUDIO["properties"], **{
        name: without_null(prop)
        for name, prop in ChatRequest.model_json_schema()["properties"].items()
        if name not in ("message", "messages", "stream")}},
    "description": "A spoken message: `audio` plus the fields of the JSON body as form fields "
                   "(also `messages`, as JSON text); the transcript is the message.",
    "additionalProperties": False,
}}}


async def read_chat(request: web.Request) -> tuple[ChatRequest, AudioUpload | None]:
    """The JSON body, or a spoken form (validated now with a stand-in for the message)."""
    if not is_upload(request):
        return await read_body(request, ChatRequest), None
    upload = await read_audio_upload(request)
    return parse_model(ChatRequest, _with_message(upload, "…"), strict=False), upload


def _with_message(upload: AudioUpload, text: str) -> dict[str, Any]:
    fields: dict[str, Any] = {k: v for k, v in upload.fields.items()
                              if k in ChatRequest.model_fields and k != "message"}
    if "messages" in fields:
        from companion_engine import jsoninput

        try:
            messages = jsoninput.loads(fields["messages"])
        except jsoninput.JSONInputError as exc:
            raise ApiError(400, f"form field `messages`: {exc.reason}") from None
        if not isinstance(messages, list):
            raise ApiError(422, "form field `messages` must be a JSON list of {role, content}")
        fields["messages"] = [*messages, {"role": "user", "content": text}]
    else:
        fields["message"] = text
    return fields


async def _spoken(engine: Engine, pipeline: Any, upload: AudioUpload
                  ) -> tuple[ChatRequest, Transcript]:
    """Transcribe a spoken request into the chat request it stands for."""
    turn = Turn(profile=pipeline.profile, user_message="", engine=engine,
                user_name=upload.fields.get("user_name") or pipeline.profile.user_name)
    transcript = await transcribe_upload(pipeline, upload, turn)
    if not transcript.text.strip():
        raise ApiError(422, "no speech was recognised in the audio", transcript.as_dict())
    return parse_model(ChatRequest, _with_message(upload, transcript.text),
                       strict=False), transcript


@routes.post("/api/chat/stream", body=ChatRequest, body_content=SPOKEN_FORM,
             response_content=SSE_DOC, tags=["chat"],
             summary="A streaming chat turn (server-sent events)",
             errors=(400, 404, 409, 413, 415, 422, 429, 502))
async def chat_stream(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    req, upload = await read_chat(request)
    async with engine.lease() as pipeline:
        opening = None
        if upload is not None:
            req, transcript = await _spoken(engine, pipeline, upload)
            opening = ("transcript", transcript.as_dict())
        speak = wants_speech(pipeline, req.enable_tts, req.audio_format)
        return await stream_turns(request, engine, pipeline,
                                  chat_turns(engine, pipeline, req), speak=speak,
                                  opening=opening)


@routes.post("/api/chat", body=ChatRequest, body_content=SPOKEN_FORM, response=ChatReply,
             tags=["chat"], summary="A chat turn answered as one JSON reply",
             errors=(400, 404, 409, 413, 415, 422, 429, 500, 502, 503, 504))
async def chat(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    req, upload = await read_chat(request)
    transcript = None
    async with engine.lease() as pipeline:
        if upload is not None:
            req, transcript = await _spoken(engine, pipeline, upload)
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
    if transcript is not None:
        body["transcript"] = transcript.as_dict()
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
