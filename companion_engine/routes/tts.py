"""``GET /api/tts/voices`` and ``POST /api/tts``: the profile's TTS backend, outside a chat turn."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from companion_engine import hookimpl
from companion_engine.errors import ApiError, UnknownVoiceError
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, json_response, read_body
from companion_engine.patterns import AudioFormat, check_voice_name
from companion_engine.speech import formats
from companion_engine.speech.session import speech_text
from companion_engine.speech.wav import WavError, wav_info
from companion_engine.turn import Turn

routes = ApiRoutes()

#: Longest text one request may speak (AllTalk's limit; OpenAI allows 4096 too).
MAX_TTS_CHARS = 4096

#: Content types of formats backends return that ``formats`` does not make.
CONTENT_TYPES = {"aac": "audio/aac", "flac": "audio/flac"}


class TTSRequest(BaseModel):
    """Text to speak with the active profile's backend and cleaners."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TTS_CHARS)
    #: A voice of the backend (see ``GET /api/tts/voices``); default: the profile's.
    voice: str | None = Field(default=None, max_length=100)
    #: ``wav``, ``pcm16``, ``opus`` or ``mp3``; default: the profile's ``speech.audio_format``,
    #: else the backend's own (WAV).
    audio_format: AudioFormat | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v

    @field_validator("voice")
    @classmethod
    def _voice_name(cls, v: str | None) -> str | None:
        return check_voice_name(v)


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
        tts = pipeline.tts
        if not tts.speaks:
            raise ApiError(409, f"text-to-speech is off: this profile's speech.tts is "
                                f"{tts.name!r}")
        target = body.audio_format or pipeline.profile.speech.audio_format
        why = formats.unavailable(target) if target else None
        if why is not None:
            raise ApiError(422, why)
        turn = Turn(profile=pipeline.profile, user_message="", engine=engine, voice=body.voice)
        spoken = await speech_text(pipeline, body.text, turn)
        if not spoken:
            raise ApiError(422, "nothing to speak: the text is only markup, emoji or "
                                "punctuation once cleaned for speech")
        try:
            audio = await tts.synthesize(spoken, turn)
        except UnknownVoiceError as exc:
            raise ApiError(422, str(exc)) from None
        except Exception as exc:
            logger.warning("POST /api/tts: {} failed: {}", tts.name, exc)
            raise ApiError(502, f"TTS backend {tts.name!r} failed: {exc}") from None
    duration_ms = audio.duration_ms
    if duration_ms is None and audio.format == "wav":
        try:
            duration_ms = wav_info(audio.data).duration_ms
        except WavError:
            pass
    data, fmt, rate = audio.data, audio.format, audio.sample_rate
    if target is not None and target != audio.format:
        try:
            out = await formats.convert_async(audio.data, audio.format, rate, target)
        except formats.AudioFormatError as exc:
            raise ApiError(502, f"TTS backend {tts.name!r} audio could not be converted to "
                                f"{target}: {exc}") from None
        data, fmt, rate = out.data, out.format, out.sample_rate
    headers = {"X-Sample-Rate": str(rate)}
    if duration_ms is not None:
        headers["X-Audio-Duration-Ms"] = str(duration_ms)
    content_type = CONTENT_TYPES.get(fmt) or formats.content_type(fmt, rate)
    return web.Response(body=data, headers={**headers, "Content-Type": content_type})


@hookimpl
def register_routes(engine: Any) -> list[web.AbstractRouteDef]:
    return list(routes)
