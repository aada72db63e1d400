"""The body of ``POST /api/chat``, ``/api/chat/stream`` and ``/api/prompt/preview``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from companion_engine.patterns import (
    CHARACTER_ID,
    CONVERSATION_ID,
    MODEL_NAME,
    VOICE_NAME,
    AudioFormat,
    check_model_name,
    check_voice_name,
)

__all__ = ["CHARACTER_ID", "CONVERSATION_ID", "MODEL_NAME", "VOICE_NAME", "AudioFormat",
           "ChatMessage", "ChatRequest", "check_voice_name"]

MAX_MESSAGES = 500
MAX_CONTENT_CHARS = 32_000


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_CONTENT_CHARS)

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v


class ChatRequest(BaseModel):
    """Client-managed history (``messages``) or server-managed (``message`` + ``conversation_id``).

    Unknown keys are ignored so the original frontend's extra fields
    (``character_card``, ``systemPrompt``, ``stream``) do not break it.
    """

    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] | None = Field(default=None, max_length=MAX_MESSAGES)
    message: str | None = Field(default=None, max_length=MAX_CONTENT_CHARS)
    conversation_id: str | None = None
    character_id: str | None = None
    model: str | None = None
    enable_tts: bool | None = None
    user_name: str | None = Field(default=None, min_length=1, max_length=100)
    #: Which greeting opens a new conversation: 0 = ``first_mes``, n = ``alternate_greetings[n-1]``.
    greeting: int | None = Field(default=None, ge=0, le=1000)
    #: A voice of the TTS backend for this turn (``GET /api/tts/voices``).
    voice: str | None = Field(default=None, max_length=100)
    #: Format of the turn's audio events (default: the profile's ``speech.audio_format``).
    audio_format: AudioFormat | None = None
    #: Audio in parts within a sentence (default: the profile's ``speech.chunked_audio``).
    chunked_audio: bool | None = None
    stream: bool | None = None

    @field_validator("character_id")
    @classmethod
    def _character_id(cls, v: str | None) -> str | None:
        if v is not None and not CHARACTER_ID.fullmatch(v):
            raise ValueError("must match ^[a-z0-9][a-z0-9_-]{0,63}$")
        return v

    @field_validator("conversation_id")
    @classmethod
    def _conversation_id(cls, v: str | None) -> str | None:
        if v is not None and not CONVERSATION_ID.fullmatch(v):
            raise ValueError("must be 1-128 letters, digits, '_', '-', '.', ':'")
        return v

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str | None) -> str | None:
        return check_voice_name(v)

    _model = field_validator("model")(check_model_name)

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

