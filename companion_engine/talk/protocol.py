"""The ``/api/ws`` protocol, version 1: every message as a pydantic model, and its JSON schema.

Client to server: JSON text messages ``{"type": ..., ...fields}`` (``start``,
``text``, ``interrupt``, ``config``, ``ping``) and binary messages of 16-bit
little-endian mono PCM at 16 kHz (the microphone). Server to client: JSON
``{"type": NAME, "data": {...}}``, where NAME and ``data`` are exactly the SSE
stream's event and payload for the events a chat stream has (``content``,
``audio_ready``, ``done``, ...), plus the WebSocket's own (``ready``, ``vad``,
``transcript_partial``, ``transcript``, ``audio_start``, ``audio_end``,
``interrupted``, ``pong``); and binary messages of PCM16 reply audio between an
``audio_start`` and its ``audio_end``.

``docs/ws.md`` carries ``json_schema()`` verbatim (a test keeps them equal):
``python -m companion_engine.talk.protocol`` prints it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, field_validator

from companion_engine.chat.request import MAX_CONTENT_CHARS
from companion_engine.patterns import CHARACTER_ID, CONVERSATION_ID, MODEL_NAME, check_voice_name

PROTOCOL_VERSION = 1
#: The subprotocol a client offers (with ``bearer.<key>`` to authenticate in the handshake).
SUBPROTOCOL = "companion.v1"
BEARER_PREFIX = "bearer."
#: The microphone's format.
INPUT_SAMPLE_RATE = 16000

# Close codes (RFC 6455 and the 4000-4999 private range).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4001
CLOSE_IDLE = 4008
CLOSE_RATE_LIMITED = 4029

CLOSE_CODES: dict[int, str] = {
    CLOSE_NORMAL: "normal closure (the client closed, or the session ended)",
    CLOSE_GOING_AWAY: "the server is shutting down",
    CLOSE_INVALID_DATA: "malformed message: not JSON, not UTF-8, an odd-length audio frame",
    CLOSE_POLICY: "protocol violation: unknown message type, a message before `start`, "
                  "audio before `start`",
    CLOSE_TOO_BIG: "a message over `server.websocket.max_frame_bytes`, or a session over "
                   "`max_session_bytes`",
    CLOSE_INTERNAL: "the server failed (logged with the session id)",
    CLOSE_TRY_AGAIN: "the server cannot serve now (the API key was removed from a network "
                     "bind)",
    CLOSE_UNAUTHORIZED: "missing or wrong API key",
    CLOSE_IDLE: "no message for `idle_timeout_s` while no reply was under way, or no `start` "
                "within `auth_timeout_s`",
    CLOSE_RATE_LIMITED: "too many wrong API keys",
}


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- client -> server ----------------------------------------------------------------------


class VADSettings(Message):
    """This session's voice activity options, over the profile's ``speech.vad``."""

    threshold: float | None = Field(default=None, gt=0, lt=1)
    min_speech_ms: int | None = Field(default=None, ge=0, le=5000)
    min_silence_ms: int | None = Field(default=None, ge=30, le=10_000)


class Settings(Message):
    """What ``start`` and ``config`` may set; a field left out keeps its value."""

    character_id: str | None = None
    user_name: str | None = Field(default=None, min_length=1, max_length=100)
    model: str | None = None
    #: A voice of the TTS backend.
    voice: str | None = Field(default=None, max_length=100)
    #: Speak the replies (default: the profile's ``speech.enabled``).
    enable_tts: bool | None = None
    #: What the user speaks (ISO 639-1), a hint for speech recognition.
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
    #: ``frames``: reply audio as binary PCM16 between ``audio_start`` and ``audio_end``;
    #: ``events``: as SSE-style ``audio_ready`` events (base64 in the profile's format).
    audio: Literal["frames", "events"] | None = None
    #: Re-transcribe the utterance this often while the user speaks; 0: off.
    partial_transcripts_ms: int | None = Field(default=None, ge=0, le=60_000)
    vad: VADSettings | None = None

    @field_validator("character_id")
    @classmethod
    def _character_id(cls, v: str | None) -> str | None:
        if v is not None and not CHARACTER_ID.fullmatch(v):
            raise ValueError("must match ^[a-z0-9][a-z0-9_-]{0,63}$")
        return v

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str | None) -> str | None:
        return check_voice_name(v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and not MODEL_NAME.fullmatch(v):
            raise ValueError("not a valid model name (provider/model)")
        return v

    @field_validator("partial_transcripts_ms")
    @classmethod
    def _partials(cls, v: int | None) -> int | None:
        if v is not None and 0 < v < 250:
            raise ValueError("must be 0 (off) or at least 250")
        return v


class Start(Settings):
    """The first message: opens the session (and authenticates, if the handshake did not)."""

    type: Literal["start"]
    protocol: Literal[1] = PROTOCOL_VERSION
    #: ``server.api_key``, when it was not sent as ``Authorization`` or a subprotocol.
    api_key: str | None = Field(default=None, max_length=1000)
    #: Continue this stored conversation (default: a new one, its id in ``ready``).
    conversation_id: str | None = None
    #: Which greeting opens a new conversation (0 = ``first_mes``).
    greeting: int | None = Field(default=None, ge=0, le=1000)

    @field_validator("conversation_id")
    @classmethod
    def _conversation_id(cls, v: str | None) -> str | None:
        if v is not None and not CONVERSATION_ID.fullmatch(v):
            raise ValueError("must be 1-128 letters, digits, '_', '-', '.', ':'")
        return v


class Config(Settings):
    """Change settings mid-session; applies from the next turn (``vad``: the next utterance)."""

    type: Literal["config"]


class Text(Message):
    """A typed message: starts a turn (interrupting the reply under way, if any)."""

    type: Literal["text"]
    text: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is blank")
        return v


class Interrupt(Message):
    """Stop the reply now (a stop button): the same as a barge-in."""

    type: Literal["interrupt"]


class Ping(Message):
    """Answered by ``pong`` with the same ``id`` (a keep-alive browsers can send)."""

    type: Literal["ping"]
    id: str | int | None = Field(default=None, union_mode="left_to_right")


ClientMessage = Annotated[Start | Config | Text | Interrupt | Ping, Field(discriminator="type")]
CLIENT_TYPES = ("start", "config", "text", "interrupt", "ping")
client_message: TypeAdapter[Start | Config | Text | Interrupt | Ping] = TypeAdapter(ClientMessage)


# --- server -> client (the ``data`` of each type) -----------------------------------------------


class Data(BaseModel):
    """Server payloads may gain fields (within protocol 1, fields are only added)."""

    model_config = ConfigDict(extra="allow")


class ReadyData(Data):
    protocol: int
    session_id: str
    conversation_id: str
    #: Whether speech is transcribed (``speech.stt`` is not ``none``).
    listening: bool
    stt: str
    vad: str
    #: The microphone format the server expects: PCM16 mono at this rate.
    sample_rate: int
    audio: Literal["frames", "events"]
    speaking: bool
    max_frame_bytes: int
    idle_timeout_s: float


class VADData(Data):
    event: Literal["onset", "false_start", "speech_start", "speech_end"]
    #: ms of microphone audio since the session started (see docs/ws.md).
    at_ms: int
    utterance: int
    start_ms: int | None = None
    forced: bool | None = None


class WordData(Data):
    word: str
    start: float
    end: float


class TranscriptData(Data):
    utterance: int | None
    text: str
    language: str | None
    words: list[WordData] | None = None
    duration: float | None = None


class TranscriptPartialData(Data):
    utterance: int
    text: str


class ProviderConnectedData(Data):
    provider: str
    type: str
    model: str
    character: str | None
    conversation_id: str | None
    timestamp: str


class ContentData(Data):
    content: str
    provider: str
    chunk_index: int
    timestamp: str
    sentence_complete: bool | None = None
    sentence: str | None = None


class AudioStartData(Data):
    index: int
    sentence: str | None
    display: str | None = None
    format: Literal["pcm16"]
    sample_rate: int
    #: Bytes of PCM16 that follow, in binary messages, before ``audio_end`` (None for a
    #: sentence sent in parts as it is synthesised: ``chunked_audio``).
    bytes: int | None
    duration_ms: int | None
    visemes: list[dict[str, Any]]


class AudioEndData(Data):
    index: int


class AudioReadyData(Data):
    index: int
    sentence: str | None
    format: str
    sample_rate: int
    audio: str
    duration_ms: int | None
    visemes: list[dict[str, Any]]


class AudioChunkData(AudioReadyData):
    part: int
    final: bool
    offset_ms: int | None = None


class AudioErrorData(Data):
    index: int
    sentence: str | None
    error: str | None


class DoneData(Data):
    provider: str
    chunk_count: int
    full_content: str
    conversation_id: str | None
    usage: dict[str, Any] | None
    finish_reason: str | None
    timings: dict[str, float | None]
    timestamp: str


class ErrorData(Data):
    #: ``provider_offline``, ``provider_error``, ``timeout``, ``stage_error``, ``bad_request``
    #: (a turn's), or the session's: ``stt_error``, ``stt_unavailable``, ``rate_limited``.
    type: str
    error: str
    timestamp: str


class InterruptedData(Data):
    #: ``barge_in`` (the user spoke), ``interrupt`` (the client asked), ``text`` (a new
    #: typed message).
    reason: Literal["barge_in", "interrupt", "text"]
    #: The last sentence index whose audio was (at least partly) sent; None: no audio yet.
    last_index: int | None
    #: The reply as stored: the sentences up to ``last_index`` (what the user heard), or
    #: the text streamed so far when the reply was not spoken.
    content: str
    conversation_id: str | None
    timestamp: str


class PongData(Data):
    id: str | int | None = Field(default=None, union_mode="left_to_right")


SERVER_DATA: dict[str, type[Data]] = {
    "ready": ReadyData,
    "vad": VADData,
    "transcript_partial": TranscriptPartialData,
    "transcript": TranscriptData,
    "provider_connected": ProviderConnectedData,
    "content": ContentData,
    "audio_start": AudioStartData,
    "audio_end": AudioEndData,
    "audio_ready": AudioReadyData,
    "audio_chunk": AudioChunkData,
    "audio_error": AudioErrorData,
    "done": DoneData,
    "error": ErrorData,
    "interrupted": InterruptedData,
    "pong": PongData,
}


def _envelope(name: str, data: type[Data]) -> type[BaseModel]:
    model = create_model(  # type: ignore[call-overload]
        f"{data.__name__.removesuffix('Data')}Message", __config__=ConfigDict(extra="forbid"),
        type=(Literal[name], ...), data=(data, ...))
    model.__doc__ = f"Server message ``{name}``."
    return model  # type: ignore[no-any-return]


SERVER_MESSAGES = [_envelope(name, data) for name, data in SERVER_DATA.items()]


def json_schema() -> dict[str, Any]:
    """The JSON schema of every message, both directions (what docs/ws.md shows)."""
    client = TypeAdapter(ClientMessage).json_schema(ref_template="#/$defs/{model}")
    server_union = Annotated[Union[tuple(SERVER_MESSAGES)], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    server = TypeAdapter(server_union).json_schema(ref_template="#/$defs/{model}")
    defs = {**client.pop("$defs", {}), **server.pop("$defs", {})}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Companion Engine /api/ws protocol {PROTOCOL_VERSION}",
        "description": "Text messages only; binary messages are PCM16 audio (docs/ws.md).",
        "$defs": {**dict(sorted(defs.items())), "ClientMessage": client,
                  "ServerMessage": server},
    }


def main() -> None:
    print(json.dumps(json_schema(), indent=2))


if __name__ == "__main__":
    main()
