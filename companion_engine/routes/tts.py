"""``GET /api/tts/voices`` and ``POST /api/tts``: the profile's TTS backend, outside a chat turn."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from companion_engine import hookimpl
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, json_response, read_body
from companion_engine.patterns import NOT_BLANK, BackendVoice, RequestAudioFormat
from companion_engine.speech.speak import speak_text

routes = ApiRoutes()

#: Longest text one request may speak (AllTalk's limit; OpenAI allows 4096 too).
MAX_TTS_CHARS = 4096

#: Content types of formats backends return that ``formats`` does not make.
CONTENT_TYPES = {"aac": "audio/aac", "flac": "audio/flac"}


class TTSRequest(BaseModel):
    """Text to speak with the active profile's backend and cleaners."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1, max_length=MAX_TTS_CHARS,
                      json_schema_extra={"pattern": NOT_BLANK})
    #: A voice of the backend (see ``GET /api/tts/voices``); default: the profile's.
    voice: BackendVoice | None = None
    #: ``wav``, ``pcm16``, ``opus`` or ``mp3``; default: the profile's ``speech.audio_format``,
    #: else the backend's own (WAV).
    audio_format: RequestAudioFormat | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v


class Voices(BaseModel):
    model_config = ConfigDict(extra="allow")

    backend: str
    speaks: bool
    voices: list[dict[str, Any]]


@routes.get("/api/tts/voices", response=Voices, summary="Voices of the TTS backend",
            tags=["tts"], errors=(502,))
async def list_voices(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    async with engine.lease() as pipeline:
        tts = pipeline.tts
        try:
            voices = await tts.voices()
        except Exception as exc:
            raise ApiError(502, f"TTS backend {tts.name!r} could not list voices: {exc}") from None
        return json_response({"backend": tts.name, "speaks": tts.speaks, "voices": voices})


@routes.post("/api/tts", body=TTSRequest, summary="Speak a text",
             description="Applies the profile's lexicon and speech cleaners and returns the "
                         "audio: `audio_format` (default the profile's speech.audio_format, "
                         "else the backend's own, WAV for espeak and Piper).",
             response_content={t: {"schema": {"type": "string", "format": "binary"}}
                               for t in ("audio/wav", "audio/ogg", "audio/mpeg", "audio/L16")},
             tags=["tts"], errors=(400, 409, 413, 422, 502))
async def speak(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await read_body(request, TTSRequest)
    async with engine.lease() as pipeline:
        audio = await speak_text(engine, pipeline, body.text, voice=body.voice,
                                 audio_format=body.audio_format)
    headers = {"X-Sample-Rate": str(audio.sample_rate)}
    if audio.duration_ms is not None:
        headers["X-Audio-Duration-Ms"] = str(audio.duration_ms)
    content_type = CONTENT_TYPES.get(audio.format) or audio.content_type
    return web.Response(body=audio.data, headers={**headers, "Content-Type": content_type})


@hookimpl
def register_routes(engine: Any) -> list[web.AbstractRouteDef]:
    return list(routes)
