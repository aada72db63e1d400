"""Config models: ``companion.yaml`` (``AppConfig``) and ``profiles/NAME.yaml`` (``Profile``).

Every model forbids unknown keys, so a typo is an error naming file, line and
key path (see ``companion_engine.configload``). A stage is written as ``name``
or ``{name: {options}}``; ``StageRef`` is its normalised form.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from companion_engine.patterns import AudioFormat

#: A stage as written in YAML: ``name`` or ``{name: {options}}``.
StageSpec = str | dict[str, dict[str, Any] | None]


class ConfigModel(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class StageRef(BaseModel):
    """A stage reference resolved from YAML: its name, raw options and list index."""

    model_config = ConfigDict(frozen=True)

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def parse(cls, spec: StageSpec) -> StageRef:
        if isinstance(spec, str):
            return cls(name=spec)
        if isinstance(spec, dict) and len(spec) == 1:
            ((name, options),) = spec.items()
            if options is None:
                options = {}
            if not isinstance(options, dict):
                raise ValueError(f"options of stage {name!r} must be a mapping")
            return cls(name=str(name), options=options)
        raise ValueError("a stage is written as `name` or `{name: {options}}` (one key)")


def _stage_list(value: Any) -> list[StageRef]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("must be a list of stages")
    return [v if isinstance(v, StageRef) else StageRef.parse(v) for v in value]


def _stage_one(value: Any) -> StageRef:
    return value if isinstance(value, StageRef) else StageRef.parse(value)


# --- companion.yaml ---------------------------------------------------------------------------


class WebSocketConfig(ConfigModel):
    """Caps of ``GET /api/ws`` sessions (one duplex WebSocket per conversation)."""

    #: Largest single message, text or binary (an audio frame), in bytes.
    max_frame_bytes: int = Field(default=256 * 1024, ge=4096, le=16 * 1024 * 1024)
    #: Bytes one session may send in total (audio included: 16 kHz PCM16 is 115 MB/hour).
    max_session_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    #: Close a session after this many seconds with no message and no reply under way.
    idle_timeout_s: float = Field(default=120, gt=0, le=86_400)
    #: Seconds a client without a key in its handshake has to send one in ``start``.
    auth_timeout_s: float = Field(default=10, gt=0, le=300)
    #: Audio sent ahead of playback: what a barge-in may still let the client play.
    audio_lead_ms: int = Field(default=300, ge=40, le=10_000)


class ServerConfig(ConfigModel):
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=0, le=65535)
    cors_origins: list[str] = Field(
        default_factory=lambda: ["http://localhost:5173", "http://127.0.0.1:5173"]
    )
    #: Required for any non-loopback bind; then every /api and /- route needs it.
    api_key: str | None = None
    #: Proxies whose ``X-Forwarded-For`` is believed.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: Largest request body in bytes (uploads have their own cap).
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    #: Concurrent chat streams one client IP may hold open (WebSocket sessions included).
    max_streams_per_ip: int = Field(default=4, ge=1)
    websocket: WebSocketConfig = Field(default_factory=WebSocketConfig)
    #: Serving processes on the one port (``auto``: one per core); see docs/deploy.md.
    workers: int | Literal["auto"] = Field(default=1)
    #: Seconds a stopping server gives turns in progress to finish before it interrupts
    #: them (their partial replies are stored as interrupted); a second signal: at once.
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=3600)

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 256:
            raise ValueError("must be between 1 and 256, or auto")
        return v

    def worker_count(self) -> int:
        """``workers`` as a number (``auto``: the cores this process may use)."""
        if self.workers == "auto":
            try:
                return max(1, len(os.sched_getaffinity(0)))
            except AttributeError:  # pragma: no cover - not Linux
                return max(1, os.cpu_count() or 1)
        return int(self.workers)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return v

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", origin, re.I):
                raise ValueError(f"{origin!r} is not an origin like http://host:port (no path)")
        return [origin.lower() for origin in v]


class PathsConfig(ConfigModel):
    profiles: Path = Path("profiles")
    characters: Path = Path("characters")
    plugins: Path = Path("plugins")
    data: Path = Path("data")


class StoreConfig(ConfigModel):
    url: str = "sqlite:///data/companion.db"
    #: Messages of recently used conversations kept parsed in memory (0: none); a turn
    #: then reads one version number instead of every message.
    cache_messages: int = Field(default=100_000, ge=0, le=100_000_000)


class RateLimitConfig(ConfigModel):
    requests: int = Field(default=100, ge=1, le=100_000)
    window_s: float = Field(default=60, gt=0, le=86_400)
    #: Clients whose buckets are remembered (least recently seen forgotten first).
    max_clients: int = Field(default=10_000, ge=1, le=10_000_000)


class LoggingConfig(ConfigModel):
    level: str = "INFO"
    #: Also write JSON lines to ``<data>/logs/companion.jsonl``.
    json_file: bool = False

    @field_validator("level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return v


class MetricsConfig(ConfigModel):
    #: ``GET /metrics`` in Prometheus text format (protected like ``/-`` routes).
    enabled: bool = True


class TracingConfig(ConfigModel):
    """OpenTelemetry spans per turn (the ``tracing`` extra; docs/deploy.md)."""

    enabled: bool = False
    #: ``otlp`` (HTTP/protobuf to ``endpoint``) or ``console`` (spans printed to stdout).
    exporter: Literal["otlp", "console"] = "otlp"
    #: OTLP traces endpoint; None: the ``OTEL_EXPORTER_OTLP_*`` environment (or localhost).
    endpoint: str | None = None
    service_name: str = Field(default="companion-engine", min_length=1)


class AppConfig(ConfigModel):
    """``companion.yaml``. Relative paths are resolved against ``base_dir``."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    profile: str = "default"
    paths: PathsConfig = Field(default_factory=PathsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    reload: bool = True
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    #: Per-plugin settings, keyed by plugin name.
    plugins: dict[str, Any] = Field(default_factory=dict)

    #: Folder of the config file (not a YAML key).
    base_dir: Path = Field(default=Path("."), exclude=True)
    #: The config file itself, when loaded from one.
    source: Path | None = Field(default=None, exclude=True)

    #: Settings given on the command line (``--port``, ...), dotted key -> value. They win
    #: over the file on every reload, so reload compares against these effective values.
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self._overrides)

    def override(self, key: str, value: Any) -> None:
        """Set the dotted ``key`` (``server.port``) and remember it as a command-line choice."""
        *parents, last = key.split(".")
        obj: Any = self
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, last, value)
        self._overrides[key] = value

    def path(self, name: str) -> Path:
        """An absolute path from ``paths:`` (profiles, characters, plugins or data)."""
        p = Path(getattr(self.paths, name))
        return p if p.is_absolute() else (self.base_dir / p).resolve()


# --- profiles/NAME.yaml -----------------------------------------------------------------------


class LLMConfig(ConfigModel):
    model: str = "ollama_chat/llama3.2"
    api_base: str | None = None
    api_key: str | None = None
    temperature: float = Field(default=0.8, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=1, le=32768)
    timeout_s: float = Field(default=60, gt=0, le=600)
    #: Extra request parameters (e.g. ``top_p``), for LiteLLM and the native client alike.
    params: dict[str, Any] = Field(default_factory=dict)
    #: ``auto``: OpenAI-compatible servers with an ``api_base`` and Ollama are streamed by
    #: the engine's own client; ``off``: every model goes through LiteLLM.
    native: Literal["auto", "off"] = "auto"
    #: Most characters one reply may stream, whatever the provider does with
    #: ``max_tokens`` (then ``finish_reason: "length"``). Default: 16 per ``max_tokens``,
    #: at least 8,000.
    max_reply_chars: int | None = Field(default=None, ge=1, le=10_000_000)


DEFAULT_PROMPT: list[StageSpec] = [
    "system_prompt",
    "first_message",
    {"lorebook": {}},
    "character_definition",
    "example_dialogue",
    "authors_note",
    {"history": {}},
    "post_history_instructions",
]


def _voice_or_none(v: str | None) -> str | None:
    from companion_engine.patterns import check_voice_name

    return v if v == "none" else check_voice_name(v)


class SpeechVoices(ConfigModel):
    """Voices per part of a reply: ``dialogue`` (inside quotes, and replies with no quotes at
    all) and ``narration`` (``*actions*`` and prose outside quotes). ``none`` leaves that part
    unspoken; unset: the backend's voice (narration: the dialogue voice)."""

    dialogue: str | None = None
    narration: str | None = None

    _names = field_validator("dialogue", "narration")(_voice_or_none)


class SpeechConfig(ConfigModel):
    enabled: bool = True
    splitter: StageRef = Field(default_factory=lambda: StageRef(name="sentence"))
    cleaners: list[StageRef] = Field(
        default_factory=lambda: _stage_list(["expressions", "actions", "markdown", "emoji"])
    )
    tts: StageRef = Field(default_factory=lambda: StageRef(name="espeak"))
    #: Sentences synthesised at once (n+1 is made while n is sent).
    concurrency: int = Field(default=2, ge=1, le=16)
    #: Narration and dialogue in their own voices (unset: one voice; actions per the cleaners).
    voices: SpeechVoices | None = None
    #: Words said differently: ``{"Seraphina": "Sera-feena"}`` (see docs/voice.md).
    lexicon: dict[str, str] = Field(default_factory=dict)
    #: Audio sent to clients: ``wav``, ``pcm16``, ``opus`` (Ogg) or ``mp3``; unset: as the
    #: backend makes it (WAV for espeak and Piper).
    audio_format: AudioFormat | None = None
    #: Send each sentence's audio in parts (``audio_chunk``) as it is synthesised.
    chunked_audio: bool = False
    #: Text waiting to be spoken, at most (characters); sentences beyond it are not spoken
    #: (``audio_error``), so a runaway reply cannot queue unbounded speech.
    max_backlog_chars: int = Field(default=20_000, ge=100, le=10_000_000)
    #: Speech to text (``/api/transcribe``, spoken chat messages, ``/api/ws``); ``none``: off.
    stt: StageRef = Field(default_factory=lambda: StageRef(name="none"))
    #: Voice activity detection on ``/api/ws`` audio: where an utterance starts and ends.
    vad: StageRef = Field(default_factory=lambda: StageRef(name="silero"))
    #: The language users speak (ISO 639-1, ``en``), a hint for the STT backend; None: detect.
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
    #: While the user speaks on ``/api/ws``, re-transcribe the utterance so far this often
    #: (``transcript_partial`` events); 0: off. Each one costs a transcription.
    partial_transcripts_ms: int = Field(default=0, ge=0, le=60_000)

    _splitter = field_validator("splitter", "tts", "stt", "vad", mode="before")(_stage_one)
    _cleaners = field_validator("cleaners", mode="before")(_stage_list)

    @field_validator("lexicon")
    @classmethod
    def _lexicon(cls, v: dict[str, str]) -> dict[str, str]:
        from companion_engine.speech.lexicon import check_entries

        return check_entries(v)


#: SillyTavern's default nudges (its ``group_nudge_prompt`` and ``continue_nudge_prompt``).
GROUP_NUDGE = "[Write the next reply only as {{char}}.]"
CONTINUE_NUDGE = ("[Continue the following message. Do not include ANY parts of the original "
                  "message. Use capitalization and punctuation as if your reply is a part of "
                  "the original message: {{lastChatMessage}}]")


class ConversationConfig(ConfigModel):
    """Group chats and continued replies (docs/chat.md, "Conversations")."""

    #: Put each speaker's ``Name:`` before their messages in a group chat's history.
    group_names: bool = True
    #: After the history of a group chat ("" for none); ``{{char}}`` is the speaker.
    group_nudge: str = GROUP_NUDGE
    #: In ``natural`` order, may the last speaker answer itself when nobody new spoke?
    allow_self_responses: bool = False
    #: Continue a reply by sending it as the last assistant message for the provider to
    #: extend (``true``), or with ``continue_nudge`` asking for the rest (``false``);
    #: ``auto``: prefill for providers that continue an assistant message (Anthropic).
    continue_prefill: bool | Literal["auto"] = "auto"
    #: Without prefill; ``{{lastChatMessage}}`` is the text being continued.
    continue_nudge: str = CONTINUE_NUDGE
    #: Between the old text and the continuation when neither brings a space.
    continue_postfix: str = Field(default=" ", max_length=10)


class Profile(ConfigModel):
    """A pipeline profile: which stages run, with which options."""

    llm: LLMConfig = Field(default_factory=LLMConfig)
    #: Default active character id.
    character: str | None = None
    user_name: str = "User"
    prompt: list[StageRef] = Field(default_factory=lambda: _stage_list(DEFAULT_PROMPT))
    output: list[StageRef] = Field(
        default_factory=lambda: _stage_list(["strip_think", "sanitize_html"])
    )
    speech: SpeechConfig = Field(default_factory=SpeechConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)

    #: The profile's name (file stem); not a YAML key.
    name: str = Field(default="default", exclude=True)
    source: Path | None = Field(default=None, exclude=True)

    _prompt = field_validator("prompt", "output", mode="before")(_stage_list)

    @model_validator(mode="after")
    def _user_name(self) -> Profile:
        if not self.user_name.strip():
            raise ValueError("user_name must not be empty")
        return self
