"""The body of ``POST /api/chat``, ``/api/chat/stream`` and ``/api/prompt/preview``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from companion_engine.patterns import (
    CHARACTER_ID,
    CONVERSATION_ID,
    MODEL_NAME,
    NOT_BLANK,
    VOICE_NAME,
    AudioFormat,
    CharacterId,
    ConversationId,
    ModelName,
    RequestAudioFormat,
    VoiceName,
    check_voice_name,
)

__all__ = ["CHARACTER_ID", "CONVERSATION_ID", "MODEL_NAME", "VOICE_NAME", "AudioFormat",
           "ChatMessage", "ChatRequest", "check_voice_name"]

MAX_MESSAGES = 500
MAX_CONTENT_CHARS = 32_000

#: ``role`` in any case (``User`` is read as ``user``), as the schema says it.
ROLE_SCHEMA = {"type": "string", "pattern": "^(?:[Ss][Yy][Ss][Tt][Ee][Mm]|[Uu][Ss][Ee][Rr]|"
               "[Aa][Ss][Ss][Ii][Ss][Tt][Aa][Nn][Tt])$",
               "description": "`system`, `user` or `assistant` (any case)"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Annotated[Literal["system", "user", "assistant"], WithJsonSchema(ROLE_SCHEMA)]
    content: str = Field(max_length=MAX_CONTENT_CHARS)

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v


def _one_history_schema(schema: dict[str, Any]) -> None:
    """What ``_one_history`` checks, as JSON Schema: ``messages`` or ``message``, not both
    (the last of ``messages`` being the user's is said in words: no keyword says "last")."""
    schema["anyOf"] = [
        {"required": ["messages"], "properties": {"messages": {"type": "array"},
                                                  "message": {"type": "null"}}},
        {"required": ["message"], "properties": {"message": {"type": "string"},
                                                 "messages": {"type": "null"}}},
    ]


class ChatRequest(BaseModel):
    """Client-managed history (``messages``, the last one the user's) or server-managed
    (``message`` + ``conversation_id``).

    Unknown keys are ignored so the original frontend's extra fields
    (``character_card``, ``systemPrompt``, ``stream``) do not break it.
    """

    model_config = ConfigDict(extra="ignore", strict=True,
                              json_schema_extra=_one_history_schema)

    #: The whole history; at least one message has text, and the last is the user's.
    messages: list[ChatMessage] | None = Field(
        default=None, max_length=MAX_MESSAGES,
        json_schema_extra={"contains": {"properties": {"content": {"pattern": NOT_BLANK}}}})
    #: The user's message (not blank) of a server-managed conversation.
    message: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS,
                                json_schema_extra={"pattern": NOT_BLANK})
    conversation_id: ConversationId | None = None
    character_id: CharacterId | None = None
    model: ModelName | None = None
    enable_tts: bool | None = None
    user_name: str | None = Field(default=None, min_length=1, max_length=100)
    #: Which greeting opens a new conversation: 0 = ``first_mes``, n = ``alternate_greetings[n-1]``.
    greeting: int | None = Field(default=None, ge=0, le=1000)
    #: A voice of the TTS backend for this turn (``GET /api/tts/voices``).
    voice: VoiceName | None = None
    #: Format of the turn's audio events (default: the profile's ``speech.audio_format``).
    audio_format: RequestAudioFormat | None = None
    #: Audio in parts within a sentence (default: the profile's ``speech.chunked_audio``).
    chunked_audio: bool | None = None
    stream: bool | None = None

    @model_validator(mode="after")
    def _one_history(self) -> ChatRequest:
        if self.messages is None and self.message is None:
            raise ValueError("send `messages` (a list of {role, content}) or `message` (a string)")
        if self.messages is not None and self.message is not None:
            raise ValueError("send either `messages` or `message`, not both")
        if self.message is not None and not self.message.strip():
            raise ValueError("`message` is empty")
        if self.messages is not None:
            if not any(m.content.strip() for m in self.messages):
                raise ValueError("`messages` has no non-empty message")
            if self.messages[-1].role != "user":
                raise ValueError("the last of `messages` must have role `user`")
        return self

    @property
    def user_message(self) -> str:
        if self.message is not None:
            return self.message
        assert self.messages is not None
        return self.messages[-1].content

