"""From an upload or an utterance to a ``Transcript`` through the profile's ``speech.stt``.

``POST /api/transcribe`` and a chat request with an ``audio`` part share
``read_audio_upload`` (multipart with an ``audio``/``file`` part, or a raw audio
body) and ``transcribe_upload``; the WebSocket session calls ``run_stt`` on each
utterance. Whatever the backend raises comes back as a ``StageError`` naming it
and its plugin.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from companion_engine.errors import ApiError, StageError
from companion_engine.speech.audioin import AudioDecodeError, decode_audio
from companion_engine.stages import AudioInput, Transcript

if TYPE_CHECKING:
    from companion_engine.pipeline import Pipeline
    from companion_engine.turn import Turn

#: Multipart part names that carry the audio (``file`` is OpenAI's name).
AUDIO_PARTS = ("audio", "file")
MAX_PARTS = 32
MAX_FIELD_BYTES = 256 * 1024
#: Longest audio one request may carry.
MAX_UPLOAD_SECONDS = 600
LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
RAW_AUDIO_TYPES = ("audio/", "video/webm", "video/ogg", "application/ogg",
                   "application/octet-stream")

#: OpenAPI: the multipart form of a spoken request.
AUDIO_FORM = {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {
        "audio": {"type": "string", "format": "binary", "minLength": 1,
                  "description": "WAV, Ogg/Opus, WebM/Opus (as MediaRecorder makes it), MP3, "
                                 "M4A, FLAC or raw PCM16 (with `sample_rate`); `file` works too"},
        "language": {"type": "string", "description": "ISO 639-1 hint, e.g. `en`"},
        "sample_rate": {"type": "integer", "description": "rate of raw PCM16 audio"},
    },
    "required": ["audio"],
}}}


@dataclass
class AudioUpload:
    data: bytes
    content_type: str | None
    filename: str | None = None
    #: The other multipart fields, as text.
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def language(self) -> str | None:
        value = self.fields.get("language") or None
        if value is not None and not LANGUAGE.fullmatch(value):
            raise ApiError(422, f"language {value[:20]!r} is not an ISO 639-1 code like `en`")
        return value

    @property
    def sample_rate(self) -> int | None:
        value = self.fields.get("sample_rate")
        if value is None:
            return None
        try:
            rate = int(value)
        except ValueError:
            raise ApiError(422, "sample_rate must be a whole number of Hz") from None
        if not 8000 <= rate <= 192000:
            raise ApiError(422, "sample_rate must be within 8000..192000 Hz")
        return rate


def is_upload(request: web.Request) -> bool:
    """Whether a chat request is spoken (multipart form) rather than JSON."""
    return request.content_type == "multipart/form-data"


async def read_audio_upload(request: web.Request, *, require_audio: bool = True
                            ) -> AudioUpload:
    """Multipart (``audio`` or ``file`` part plus text fields) or a raw audio body."""
    ctype = request.content_type
    if ctype == "multipart/form-data":
        return await _read_multipart(request, require_audio)
    if ctype.startswith(RAW_AUDIO_TYPES):
        data = await request.read()
        if not data:
            raise ApiError(400, "the request body is empty; send the audio")
        return AudioUpload(data, request.headers.get("Content-Type"))
    raise ApiError(415, f"send audio as multipart/form-data with an `audio` part, or as the "
                        f"body with an audio content type (got {ctype!r})")


async def _read_multipart(request: web.Request, require_audio: bool) -> AudioUpload:
    audio: AudioUpload | None = None
    fields: dict[str, str] = {}
    try:
        reader = await request.multipart()
        count = 0
        async for part in reader:
            count += 1
            if count > MAX_PARTS:
                raise ApiError(400, f"multipart body has more than {MAX_PARTS} parts")
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "nested multipart bodies are not accepted")
            name = part.name
            if name is None or not name.isprintable():
                raise ApiError(400, "malformed multipart body: a part without a usable name")
            if name in AUDIO_PARTS:
                if audio is not None:
                    raise ApiError(400, "send one audio part (`audio` or `file`), not several")
                data = bytes(await part.read())
                if not data:
                    raise ApiError(400, f"the `{name}` part is empty")
                audio = AudioUpload(data, part.headers.get("Content-Type"), part.filename)
                continue
            if part.filename is not None:
                await part.release()  # some other file: not ours
                continue
            raw = await part.read()
            if len(raw) > MAX_FIELD_BYTES:
                raise ApiError(413, f"multipart field `{name}` is over {MAX_FIELD_BYTES} bytes")
            try:
                fields[name] = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, f"multipart field `{name}` is not UTF-8 text") from None
    except ApiError:
        raise
    except web.HTTPRequestEntityTooLarge:
        raise
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        reason = " ".join(str(getattr(exc, "message", None) or exc).split())
        raise ApiError(400, f"malformed multipart body: {reason}") from None
    if audio is None:
        if require_audio:
            raise ApiError(400, "multipart field `audio` is missing (`file` also works)")
        audio = AudioUpload(b"", None)
    audio.fields = fields
    return audio


async def run_stt(pipeline: Pipeline, audio: AudioInput, turn: Turn) -> Transcript:
    """``pipeline.stt.transcribe`` with its failures blamed on the stage."""
    stt = pipeline.stt
    try:
        result = await stt.transcribe(audio, turn)
        if not isinstance(result, Transcript):
            raise TypeError(f"transcribe() returned {type(result).__name__}, not a Transcript")
        return result
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise pipeline.blame(stt, exc) from exc


async def transcribe_upload(pipeline: Pipeline, upload: AudioUpload, turn: Turn) -> Transcript:
    """Decode and transcribe one upload; every failure is an ``ApiError`` with its status."""
    stt = pipeline.stt
    if not stt.listens:
        raise ApiError(409, f"speech input is off: this profile's speech.stt is {stt.name!r}")
    try:
        audio = await decode_audio(upload.data, upload.content_type,
                                   sample_rate=upload.sample_rate,
                                   max_seconds=MAX_UPLOAD_SECONDS, language=upload.language)
    except AudioDecodeError as exc:
        raise ApiError(exc.status, str(exc)) from None
    try:
        return await run_stt(pipeline, audio, turn)
    except StageError as exc:
        raise ApiError(502, f"speech recognition failed: {exc}") from None
