"""Companion Engine: a plugin-based server for AI companion apps.

Everything a plugin author needs is importable from here::

    from companion_engine import Sanitizer, StageOptions, Turn, hookimpl

``api_version`` is the version of this plugin API (stable within ``1.x``:
names are only added, never removed or changed in meaning).
"""

from __future__ import annotations

from companion_engine.errors import (
    ApiError,
    ConfigError,
    StageError,
    UnknownVoiceError,
)
from companion_engine.hookspecs import hookimpl, hookspec
from companion_engine.stages import (
    Audio,
    AudioInput,
    LorebookInjector,
    PromptBuilder,
    Sanitizer,
    SentenceSplitter,
    Stage,
    StageOptions,
    STTBackend,
    Transcript,
    TTSBackend,
    VADBackend,
    VADOptions,
    Word,
)
from companion_engine.turn import (
    HistoryInfo,
    LoreActivation,
    LorebookInfo,
    LoreDrop,
    Message,
    Turn,
    TurnResult,
)

__version__ = "0.2.0"
#: The plugin API this engine implements.
api_version = "1.0"

__all__ = [
    "ApiError",
    "Audio",
    "AudioInput",
    "ConfigError",
    "HistoryInfo",
    "LoreActivation",
    "LoreDrop",
    "LorebookInfo",
    "LorebookInjector",
    "Message",
    "PromptBuilder",
    "STTBackend",
    "Sanitizer",
    "SentenceSplitter",
    "Stage",
    "StageError",
    "StageOptions",
    "TTSBackend",
    "Transcript",
    "Turn",
    "TurnResult",
    "UnknownVoiceError",
    "VADBackend",
    "VADOptions",
    "Word",
    "__version__",
    "api_version",
    "hookimpl",
    "hookspec",
]
