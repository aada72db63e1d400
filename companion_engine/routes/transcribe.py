"""``POST /api/transcribe``: one recording in, what the profile's ``speech.stt`` heard out."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from companion_engine import hookimpl
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, json_response
from companion_engine.talk.transcription import (
    AUDIO_FORM,
    read_audio_upload,
    transcribe_upload,
)
from companion_engine.turn import Turn

routes = ApiRoutes()

RAW_BODY = {"audio/wav": {"schema": {"type": "string", "format": "binary"}},
            "audio/ogg": {"schema": {"type": "string", "format": "binary"}},
            "audio/webm": {"schema": {"type": "string", "format": "binary"}},
            "audio/L16": {"schema": {"type": "string", "format": "binary",
                                     "description": "raw PCM16, big-endian (RFC 2586); "
                                                    "`; rate=16000` in the type"}}}


class WordTime(BaseModel):
    word: str
    start: float
    end: float
    probability: float | None = None


class TranscriptBody(BaseModel):
    text: str
    language: str | None
    words: list[WordTime] | None = None
    duration: float | None = None


@routes.post("/api/transcribe", body_content={**AUDIO_FORM, **RAW_BODY}, response=TranscriptBody,
             tags=["speech"], summary="Transcribe a recording",
             description="Multipart with an `audio` (or `file`) part and optional `language`, "
                         "or the audio as the body. WAV, raw PCM16, Ogg/Opus, WebM/Opus, MP3, "
                         "M4A, FLAC; decoded to 16 kHz mono and sent to the profile's "
                         "`speech.stt`. See docs/ws.md.",
             errors=(400, 409, 413, 415, 422, 429, 502))
async def transcribe(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    upload = await read_audio_upload(request)
    async with engine.lease() as pipeline:
        turn = Turn(profile=pipeline.profile, user_message="", engine=engine,
                    user_name=pipeline.profile.user_name)
        transcript = await transcribe_upload(pipeline, upload, turn)
    return json_response(transcript.as_dict())


@hookimpl
def register_routes(engine: Any) -> list[web.AbstractRouteDef]:
    return list(routes)
