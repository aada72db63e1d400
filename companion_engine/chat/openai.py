"""A chat turn in OpenAI's wire format: the request, the model names, the chunks.

``POST /v1/chat/completions`` runs the same turn as ``/api/chat/stream`` (prompt
stages, lorebook, sanitizers, speech); this module translates at the edges. The
client's ``messages`` become the turn's history (its system messages kept as the
user's own instructions, after the card's), ``model`` picks the companion, and the
turn's events become ``chat.completion.chunk`` objects (or one
``chat.completion``). Names follow OpenAI's API reference; unknown request fields
are accepted and ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from companion_engine.chat.request import MAX_CONTENT_CHARS, MAX_MESSAGES, ChatMessage
from companion_engine.chat.sse import encode_data, encode_json
from companion_engine.errors import ApiError
from companion_engine.patterns import (
    CHARACTER_ID,
    MODEL_NAME,
    NAMED,
    check_voice_name,
    ecma,
    ref,
)

#: ``profile/<name>/<character_id>``: a profile file stem.
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
#: OpenAI's own voice names: a client that knows no others sends one of these; they mean
#: "the profile's voice".
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx",
                           "sage", "shimmer", "verse", "marin", "cedar"})
#: OpenAI audio output format -> ours.
AUDIO_FORMATS = {"wav": "wav", "pcm16": "pcm16", "mp3": "mp3", "opus": "opus"}
#: Our finish reasons -> OpenAI's (a stage's own reason is ``stop`` there).
FINISH = {"length": "length", "content_filter": "content_filter"}
#: The roles a turn reads (``tool`` and ``function`` are refused with a 400: no tools here).
ROLES = ("system", "developer", "user", "assistant")
#: Content parts that carry text (others are refused with a 400).
TEXT_PARTS = ("text", "input_text")


def _id_part(regex: re.Pattern[str]) -> str:
    """``regex`` (an anchored ``patterns`` name) as a piece of a longer JSON Schema pattern."""
    return ecma(regex).removeprefix("^").removesuffix("$")


#: The named schemas of the /v1 requests: what ``parse_model`` and ``/v1/audio/speech``'s
#: voice check accept, as JSON Schema.
SCHEMAS: dict[str, dict[str, Any]] = {
    "OpenAIModelName": {"anyOf": [
        {"const": "companion", "description": "the active character"},
        {"type": "string", "pattern": f"^companion/{_id_part(CHARACTER_ID)}$",
         "description": "`companion/<character_id>`: a character of the active profile"},
        {"type": "string", "pattern": f"^profile/{_id_part(PROFILE_NAME)}"
                                      f"(?:/{_id_part(CHARACTER_ID)})?$",
         "description": "`profile/<name>/<character_id>` (or `profile/<name>`: its own "
                        "character)"},
        ref("ModelName"),
    ], "description": "What to talk to; 404 (`model_not_found`) for a character or profile "
                      "that does not exist. `GET /v1/models` lists them."},
    "OpenAIVoice": {"anyOf": [
        {"type": "string", "enum": sorted(OPENAI_VOICES),
         "description": "OpenAI's voice names: the profile's own voice"},
        ref("BackendVoice"),
    ]},
}


def _text_part(schema: dict[str, Any]) -> None:
    """The document offers the parts a turn reads: text (others are a 400)."""
    schema["properties"]["type"] = {"type": "string", "enum": list(TEXT_PARTS)}
    schema["properties"]["text"] = {"type": "string", "maxLength": MAX_CONTENT_CHARS}
    schema["required"] = ["type", "text"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=_text_part)

    type: str = Field(max_length=64)
    text: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS)


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"] = Field(
        json_schema_extra={"enum": list(ROLES)})
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=100)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class AudioOutput(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    #: Any voice name: one the backend lacks is an ``audio_error`` of the turn (as in
    #: /api/chat), not a refused request.
    voice: Annotated[str, WithJsonSchema({
        NAMED: "VoiceName", "default": "alloy",
        "description": "OpenAI's names (alloy, nova, ...) mean the profile's voice; other "
                       "names are the backend's own (`GET /v1/audio/voices`)."})] = Field(
        default="alloy", max_length=100)
    #: flac and aac are OpenAI's too, and refused here (400): the document offers ours.
    format: Annotated[Literal["wav", "pcm16", "mp3", "opus", "flac", "aac"],
                      WithJsonSchema({NAMED: "AudioFormat"})] = "wav"

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str) -> str:
        return check_voice_name(v) or v


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions`` (unknown fields are ignored)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Annotated[str, WithJsonSchema({NAMED: "OpenAIModelName"})] = Field(
        max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9/_.:@+-]{0,199}$",
        description="`companion`, `companion/<character_id>`, `profile/<name>/<character_id>` "
                    "or a LiteLLM model string")
    #: The conversation; the last message is the user's and has text (400 otherwise).
    messages: list[OpenAIMessage] = Field(
        min_length=1, max_length=MAX_MESSAGES,
        description="The conversation so far; the last message is the user's, with text "
                    f"(at most {MAX_CONTENT_CHARS} characters a message).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    stop: str | list[str] | None = Field(
        default=None, json_schema_extra={"anyOf": [{"type": "string"}, {
            "type": "array", "items": {"type": "string"}, "maxItems": 4}, {"type": "null"}]})
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    #: OpenAI: an end-user id. Here also the user's name in the prompt (``{{user}}``).
    user: str | None = Field(default=None, min_length=1, max_length=100)
    modalities: list[Literal["text", "audio"]] | None = Field(default=None, max_length=2)
    audio: AudioOutput | None = None
    n: int | None = Field(default=None, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @property
    def wants_audio(self) -> bool:
        return bool(self.modalities and "audio" in self.modalities)

    def llm_params(self) -> dict[str, Any]:
        """The sampling settings that pass through to the provider."""
        params: dict[str, Any] = {}
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        for key in ("temperature", "top_p", "stop", "seed", "presence_penalty",
                    "frequency_penalty"):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        return params


# --- what ``model`` names ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What a ``model`` string asks for: a profile (None: the active one), a character
    (None: the active one) and a LiteLLM model (None: the profile's)."""

    profile: str | None = None
    character_id: str | None = None
    model: str | None = None


def parse_model(model: str) -> Target:
    """``companion``, ``companion/<id>``, ``profile/<name>/<id>`` or a LiteLLM model."""
    if model == "companion":
        return Target()
    head, _, rest = model.partition("/")
    if head == "companion":
        if not CHARACTER_ID.match(rest):
            raise not_found(model, "companion/<character_id> needs a character id like "
                                   "seraphina (lower-case letters, digits, _ and -)")
        return Target(character_id=rest)
    if head == "profile":
        name, _, character = rest.partition("/")
        if not PROFILE_NAME.match(name) or (character and not CHARACTER_ID.match(character)):
            raise not_found(model, "write profile/<profile name>/<character_id>")
        return Target(profile=name, character_id=character or None)
    if not MODEL_NAME.match(model):
        raise not_found(model, "not a model name")
    return Target(model=model)


def not_found(model: str, why: str) -> ApiError:
    return ApiError(404, f"the model {model!r} does not exist: {why}",
                    {"param": "model", "code": "model_not_found"})


# --- messages -> history ---------------------------------------------------------------------


def text_of(message: OpenAIMessage) -> str:
    """A message's text; content parts other than text are refused (400)."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type not in ("text", "input_text") or part.text is None:
            raise ApiError(400, f"content part of type {part.type!r} is not supported: "
                                "only text parts", {"param": "messages", "code": None})
        texts.append(part.text)
    return "".join(texts)


def chat_messages(messages: list[OpenAIMessage]) -> list[ChatMessage]:
    """The client's messages as the turn's history plus its last user message."""
    out: list[ChatMessage] = []
    for i, m in enumerate(messages):
        if m.role in ("tool", "function"):
            raise ApiError(400, f"messages[{i}]: role {m.role!r} is not supported (no tools "
                                "here)", {"param": f"messages[{i}].role", "code": None})
        text = text_of(m)
        if len(text) > MAX_CONTENT_CHARS:
            raise ApiError(400, f"messages[{i}] is longer than {MAX_CONTENT_CHARS} characters",
                           {"param": f"messages[{i}].content", "code": "string_above_max_length"})
        role = "system" if m.role == "developer" else m.role
        out.append(ChatMessage(role=role, content=text))  # type: ignore[arg-type]
    if out[-1].role != "user" or not out[-1].content.strip():
        raise ApiError(400, "the last message must be a non-empty message from the user",
                       {"param": "messages", "code": None})
    return out


# --- the response objects --------------------------------------------------------------------


def finish_reason(reason: str | None) -> str:
    return FINISH.get(reason or "", "stop")


def openai_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    u = usage or {}
    prompt, completion = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(u.get("total_tokens") or prompt + completion)}


@dataclass
class Completion:
    """One reply's identity and what it has produced so far (for chunks and the final object)."""

    model: str
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))
    audio_id: str = field(default_factory=lambda: "audio_" + secrets.token_hex(12))
    audio_format: str | None = None
    audio: list[bytes] = field(default_factory=list)
    audio_rate: int | None = None
    transcript: list[str] = field(default_factory=list)
    #: A content chunk's ``data:`` line before and after the text, encoded once.
    _content_frame: tuple[bytes, bytes] | None = field(default=None, repr=False)

    def content_data(self, content: str) -> bytes:
        """``encode_data(self.chunk({"content": content}))``, byte for byte, for one token:
        the chunk around the text is encoded once per reply, so a token costs the JSON of
        its text alone (the whole chunk per token was most of ``/v1``'s extra cost)."""
        if self._content_frame is None:
            head, _, tail = encode_data(self.chunk({"content": ""})).partition(
                b'"content":""')
            self._content_frame = (head + b'"content":', tail)
        head, tail = self._content_frame
        return head + encode_json(content) + tail

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    def usage_chunk(self, usage: dict[str, Any] | None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": None, "choices": [],
                "usage": openai_usage(usage)}

    def audio_delta(self, event: dict[str, Any]) -> dict[str, Any]:
        """One sentence's ``audio_ready`` event as a streamed ``delta.audio``."""
        return {"audio": {"id": self.audio_id, "data": event["audio"],
                          "transcript": event.get("sentence") or "",
                          "expires_at": self.created + 3600}}

    def keep_audio(self, event: dict[str, Any]) -> None:
        """Collect one sentence's audio for the non-streamed ``message.audio``."""
        self.audio.append(base64.b64decode(event["audio"]))
        self.audio_rate = self.audio_rate or int(event.get("sample_rate") or 0) or None
        self.transcript.append(event.get("sentence") or "")

    def completion(self, content: str, reason: str | None, usage: dict[str, Any] | None,
                   audio: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if audio is not None:
            message["audio"] = audio
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish_reason(reason)}],
                "usage": openai_usage(usage)}


def error_object(status: int, message: str, detail: Any = None) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {message, type, param, code}}``."""
    extra = detail if isinstance(detail, dict) else {}
    kind = ("invalid_request_error" if status < 500 else "server_error")
    if status == 429:
        kind = "rate_limit_error"
    elif status == 401:
        kind = "authentication_error"
    elif status == 403:
        kind = "permission_error"
    code = extra.get("code", {401: "invalid_api_key", 404: "not_found",
                              429: "rate_limit_exceeded"}.get(status))
    return {"error": {"message": message, "type": kind, "param": extra.get("param"),
                      "code": code}}
