"""The OpenAI API: ``/v1/chat/completions``, ``/v1/models``, ``/v1/audio/speech``,
``/v1/audio/voices``.

Any OpenAI client (the SDKs, LiteLLM, SillyTavern's "Custom OpenAI-compatible"
source, Open WebUI) talks to the whole companion: card, lorebook, sanitizers and
speech run exactly as for ``/api/chat/stream``. Errors leave in OpenAI's shape
(``{"error": {message, type, param, code}}``, rendered by the error middleware for
``/v1`` paths), with the statuses the SDKs map to their exception types. Auth,
rate limits and body caps are the same as for ``/api``. See docs/openai.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from companion_engine import hookimpl
from companion_engine.chat.openai import (
    AUDIO_FORMATS,
    OPENAI_VOICES,
    SCHEMAS,
    ChatCompletionRequest,
    Completion,
    Target,
    chat_messages,
    finish_reason,
    not_found,
    parse_model,
)
from companion_engine.chat.request import ChatRequest
from companion_engine.chat.runner import TurnRunner
from companion_engine.chat.sse import SSEWriter, encode_data
from companion_engine.chat.turns import make_turn
from companion_engine.engine import Engine
from companion_engine.errors import ApiError, ConfigError
from companion_engine.keys import ENGINE
from companion_engine.openapi import (
    ApiRoutes,
    add_live_schemas,
    add_schemas,
    json_response,
    read_body,
)
from companion_engine.openapi import parse_model as validate
from companion_engine.patterns import NAMED, NOT_BLANK, check_voice_name
from companion_engine.pipeline import Pipeline
from companion_engine.speech import formats
from companion_engine.speech.speak import speak_text

routes = ApiRoutes()
TAGS = ["openai"]
add_schemas(SCHEMAS)

#: HTTP status of a non-streamed completion for each turn error type.
ERROR_STATUS = {"provider_offline": 503, "provider_error": 502, "timeout": 504,
                "stage_error": 500, "bad_request": 400}
#: Most ``model`` ids ``GET /v1/models`` lists for profile/<name>/<character> pairs.
MAX_LISTED = 500
DONE = b"data: [DONE]\n\n"


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error body."""

    error: OpenAIErrorDetail


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIChatCompletion(BaseModel):
    """A ``chat.completion`` object (``stream: false``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, int]


class OpenAISpeechRequest(BaseModel):
    """The body of ``POST /v1/audio/speech`` (unknown fields are ignored)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(default="tts-1", min_length=1, max_length=200)
    input: str = Field(min_length=1, max_length=4096, json_schema_extra={"pattern": NOT_BLANK})
    voice: Annotated[str, WithJsonSchema({NAMED: "OpenAIVoice"})] = Field(
        default="alloy", min_length=1, max_length=100)
    #: aac and flac are OpenAI's too, and refused here (400): the document offers ours.
    response_format: Annotated[Literal["mp3", "opus", "aac", "flac", "wav", "pcm"],
                               WithJsonSchema({NAMED: "SpeechFormat"})] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(default=None, max_length=4096)

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str) -> str:
        return check_voice_name(v) or v

    @field_validator("input")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("input is blank")
        return v


class OpenAIVoiceList(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    voices: list[str]


SSE_DOC = {"text/event-stream": {"schema": {
    "type": "object",
    "description": "With `stream: true`: `data: <chat.completion.chunk JSON>` lines, then "
                   "`data: [DONE]`. See docs/openai.md.",
    "required": ["data"],
    "properties": {"data": {"type": "string"}}}}}
AUDIO_DOC = {t: {"schema": {"type": "string", "format": "binary"}}
             for t in ("audio/mpeg", "audio/ogg", "audio/wav", "audio/L16")}


def our_voice(voice: str | None) -> str | None:
    """OpenAI's voice names mean "the profile's voice"; any other is the backend's own."""
    return None if voice is None or voice in OPENAI_VOICES else voice


# --- chat completions ------------------------------------------------------------------------


async def _runner(engine: Engine, pipeline: Pipeline, body: ChatCompletionRequest,
                  target: Target, *, audio_format: str | None) -> TurnRunner:
    history = chat_messages(body.messages)
    voice = our_voice(body.audio.voice) if body.audio is not None else None
    character_id = target.character_id
    if character_id is None and target.profile is not None:
        character_id = pipeline.profile.character  # profile/<name>: its own character
    req = validate(ChatRequest, {
        "messages": [m.model_dump() for m in history], "character_id": character_id,
        "model": target.model, "user_name": body.user, "voice": voice,
        "audio_format": audio_format})
    try:
        turn = await make_turn(engine, pipeline, req)
    except ApiError as exc:
        if exc.status == 404:  # the character named by the model
            raise not_found(body.model, exc.error) from None
        raise
    turn.llm_params = body.llm_params()
    runner = TurnRunner(engine, pipeline, turn, speak=body.wants_audio, store_history=False)
    await runner.prepare()
    return runner


def _audio_format(body: ChatCompletionRequest, pipeline: Pipeline) -> str | None:
    """Our audio format for the reply's ``audio`` (None without the audio modality)."""
    if not body.wants_audio:
        return None
    if not pipeline.tts.speaks:
        raise ApiError(400, f"this companion does not speak (its profile's speech.tts is "
                            f"{pipeline.tts.name!r}): leave out the audio modality",
                       {"param": "modalities", "code": None})
    asked = body.audio.format if body.audio is not None else "wav"
    ours = AUDIO_FORMATS.get(asked)
    why = formats.unavailable(ours) if ours else f"audio format {asked!r} is not supported " \
        f"(use {', '.join(AUDIO_FORMATS)})"
    if why is not None:
        raise ApiError(400, why, {"param": "audio.format", "code": None})
    return ours


@routes.post("/v1/chat/completions", body=ChatCompletionRequest, response=OpenAIChatCompletion,
             response_content=SSE_DOC, tags=TAGS, error_model=OpenAIError,
             summary="A chat turn with a companion, in OpenAI's format",
             description="`model`: `companion` (the active character), "
                         "`companion/<character_id>`, `profile/<name>/<character_id>` or a "
                         "LiteLLM model string (the active profile with that model). The "
                         "messages are the conversation; the card, lorebook, sanitizers and "
                         "speech run as for /api/chat/stream. `modalities: [\"text\", "
                         "\"audio\"]` adds the companion's voice (`delta.audio` / "
                         "`message.audio`).",
             errors=(400, 404, 500, 502, 503, 504))
async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await read_body(request, ChatCompletionRequest)
    target = parse_model(body.model)
    async with contextlib.AsyncExitStack() as stack:
        try:
            pipeline = await stack.enter_async_context(engine.lease(target.profile))
        except ConfigError as exc:  # profile/<name>/...: missing or invalid
            raise not_found(body.model, str(exc).splitlines()[0]) from None
        if body.stream:
            return await _stream(request, engine, pipeline, body, target)
        return await _complete(engine, pipeline, body, target)


async def _complete(engine: Engine, pipeline: Pipeline, body: ChatCompletionRequest,
                    target: Target) -> web.Response:
    audio_format = _audio_format(body, pipeline)
    # The reply's audio is one file: sentences are collected as raw PCM and encoded once.
    runner = await _runner(engine, pipeline, body, target,
                           audio_format="pcm16" if audio_format else None)
    completion = Completion(model=body.model)

    async def emit(event: str, data: dict[str, Any]) -> None:
        if event in ("audio_ready", "audio_chunk"):
            completion.keep_audio(data)

    result = await runner.run(emit)
    if result.error is not None:
        raise ApiError(ERROR_STATUS.get(result.error["type"], 502), result.error["error"],
                       {"code": result.error["type"]})
    audio = None
    if audio_format is not None and completion.audio:
        rate = completion.audio_rate or 22050
        encoded = await asyncio.to_thread(formats.encode, b"".join(completion.audio), rate,
                                          audio_format)
        audio = {"id": completion.audio_id, "data": base64.b64encode(encoded.data).decode(),
                 "expires_at": completion.created + 3600,
                 "transcript": " ".join(t for t in completion.transcript if t)}
    return json_response(completion.completion(result.content, result.finish_reason,
                                               result.usage, audio))


async def _stream(request: web.Request, engine: Engine, pipeline: Pipeline,
                  body: ChatCompletionRequest, target: Target) -> web.StreamResponse:
    runner = await _runner(engine, pipeline, body, target,
                           audio_format=_audio_format(body, pipeline))
    completion = Completion(model=body.model)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    writer = await SSEWriter.open(request)

    async def send(obj: dict[str, Any]) -> None:
        await writer.send_bytes(encode_data(obj))

    async def emit(event: str, data: dict[str, Any]) -> None:
        if event == "content":
            if data["content"]:
                await writer.send_bytes(completion.content_data(data["content"]))
        elif event in ("audio_ready", "audio_chunk"):
            await send(completion.chunk(completion.audio_delta(data)))
        elif event == "provider_connected":
            await send(completion.chunk({"role": "assistant", "content": ""}))
        elif event == "done":
            await send(completion.chunk({}, finish_reason(data.get("finish_reason"))))
            if include_usage:
                await send(completion.usage_chunk(data.get("usage")))
            await writer.send_bytes(DONE)
        elif event == "error":
            status = ERROR_STATUS.get(data.get("type", ""), 502)
            await send({"error": {"message": data.get("error", ""), "type": "server_error"
                                  if status >= 500 else "invalid_request_error",
                                  "param": None, "code": data.get("type")}})

    await runner.stream_to(writer, emit)
    await writer.close()
    return writer.response


# --- models ----------------------------------------------------------------------------------


def _model(id_: str, created: int, owned_by: str = "companion-engine",
           **extra: Any) -> dict[str, Any]:
    return {"id": id_, "object": "model", "created": created, "owned_by": owned_by, **extra}


async def list_model_ids(engine: Engine) -> list[dict[str, Any]]:
    created = int(engine.started_at)
    characters = sorted(c.id for c in engine.characters.list())
    data = [_model("companion", created, description="the active character")]
    data += [_model(f"companion/{cid}", created) for cid in characters]
    profiles = sorted(p.stem for p in engine.config.path("profiles").glob("*.yaml"))
    pairs = [(p, c) for p in profiles for c in characters][:MAX_LISTED]
    data += [_model(f"profile/{p}/{c}", created) for p, c in pairs]
    for m in await engine.llm.list_models():
        data.append(_model(m["name"], created, owned_by=m.get("provider") or "provider"))
    return data


@routes.get("/v1/models", response=OpenAIModelList, tags=TAGS, error_model=OpenAIError,
            summary="Models: the companions, every character, and the providers' models",
            errors=())
async def list_models(request: web.Request) -> web.Response:
    data = await list_model_ids(request.app[ENGINE])
    return json_response({"object": "list", "data": data})


@routes.get("/v1/models/{model:.+}", response=OpenAIModel, tags=TAGS, error_model=OpenAIError,
            summary="One model", errors=(404,),
            path_params={"model": {"type": "string", "minLength": 1, "maxLength": 200}})
async def get_model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    for item in await list_model_ids(request.app[ENGINE]):
        if item["id"] == model:
            return json_response(item)
    raise not_found(model, "GET /v1/models lists the models served here")


# --- audio -----------------------------------------------------------------------------------

#: ``response_format`` -> our format (OpenAI's ``pcm`` is raw 16-bit samples).
SPEECH_FORMATS = {"mp3": "mp3", "opus": "opus", "wav": "wav", "pcm": "pcm16"}


def speech_formats() -> dict[str, dict[str, Any]]:
    """``SpeechFormat``: the ``response_format`` values this install encodes (mp3 and
    opus need PyAV)."""
    return {"SpeechFormat": {
        "type": "string", "default": "mp3",
        "enum": [f for f, ours in SPEECH_FORMATS.items() if formats.unavailable(ours) is None],
        "description": "`mp3`, `opus` (Ogg), `wav` or `pcm` (raw 16-bit little-endian mono at "
                       "`X-Sample-Rate`); mp3 and opus with PyAV installed."}}


add_live_schemas(speech_formats)


@routes.post("/v1/audio/speech", body=OpenAISpeechRequest, response_content=AUDIO_DOC, tags=TAGS,
             error_model=OpenAIError, summary="Speak a text with the profile's TTS backend",
             description="The profile's lexicon, speech cleaners and TTS backend, as "
                         "/api/tts. OpenAI's voice names (alloy, nova, ...) mean the "
                         "profile's voice; other names are the backend's own voices "
                         "(GET /v1/audio/voices). `pcm` is raw 16-bit mono samples at the "
                         "rate in `X-Sample-Rate`.",
             errors=(400, 409, 422, 502))
async def speech(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await read_body(request, OpenAISpeechRequest)
    fmt = SPEECH_FORMATS.get(body.response_format)
    if fmt is None:
        raise ApiError(400, f"response_format {body.response_format!r} is not supported here "
                            f"(use {', '.join(SPEECH_FORMATS)})",
                       {"param": "response_format", "code": None})
    async with engine.lease() as pipeline:
        audio = await speak_text(engine, pipeline, body.input, voice=our_voice(body.voice),
                                 audio_format=fmt,
                                 speed=None if body.speed == 1.0 else body.speed)
    headers = {"X-Sample-Rate": str(audio.sample_rate)}
    if audio.duration_ms is not None:
        headers["X-Audio-Duration-Ms"] = str(audio.duration_ms)
    return web.Response(body=audio.data, headers={**headers, "Content-Type": audio.content_type})


@routes.get("/v1/audio/voices", response=OpenAIVoiceList, tags=TAGS, error_model=OpenAIError,
            summary="Voices of the profile's TTS backend", errors=(502,))
async def voices(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    async with engine.lease() as pipeline:
        try:
            found = await pipeline.tts.voices()
        except Exception as exc:
            raise ApiError(502, f"TTS backend {pipeline.tts.name!r} could not list voices: "
                                f"{exc}") from None
    data = [{**v, "id": str(v.get("id") or v.get("name"))} for v in found]
    return json_response({"object": "list", "data": data, "voices": [v["id"] for v in data]})


@hookimpl
def register_routes(engine: Any) -> list[web.AbstractRouteDef]:
    return list(routes)
