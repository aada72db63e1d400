"""Every hook a plugin can implement, in one place.

Registration hooks are synchronous and return a list of stage classes; the
pipeline calls the stages directly, so pluggy is never on the per-token path.
Host hooks may be ``async def``: the engine awaits whatever they return.
Never give a hookimpl parameter a default value: pluggy would never pass it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from companion_engine.engine import Engine
    from companion_engine.stages import (
        LorebookInjector,
        PromptBuilder,
        Sanitizer,
        SentenceSplitter,
        STTBackend,
        TTSBackend,
        VADBackend,
    )
    from companion_engine.turn import Turn

PROJECT = "companion_engine"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_prompt_builders() -> list[type[PromptBuilder]]:
    """Return prompt builder classes (stages of a profile's ``prompt:`` list)."""


@hookspec
def register_lorebook_injectors() -> list[type[LorebookInjector]]:
    """Return lorebook injector classes (also usable in a profile's ``prompt:`` list)."""


@hookspec
def register_sanitizers() -> list[type[Sanitizer]]:
    """Return sanitizer classes (used in ``output:`` and ``speech.cleaners``)."""


@hookspec
def register_sentence_splitters() -> list[type[SentenceSplitter]]:
    """Return sentence splitter classes (the ``speech.splitter`` slot)."""


@hookspec
def register_tts_backends() -> list[type[TTSBackend]]:
    """Return TTS backend classes (the ``speech.tts`` slot)."""


@hookspec
def register_stt_backends() -> list[type[STTBackend]]:
    """Return speech-to-text backend classes (the ``speech.stt`` slot)."""


@hookspec
def register_vad_backends() -> list[type[VADBackend]]:
    """Return voice activity detector classes (the ``speech.vad`` slot)."""


@hookspec
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    """Return aiohttp route definitions; collected once, before the server starts."""


@hookspec
def startup(engine: Engine) -> Any:
    """Called once the engine is ready, before the first request. May be async."""


@hookspec
def shutdown(engine: Engine) -> Any:
    """Called when the server stops. May be async."""


@hookspec
def config_reloaded(engine: Engine) -> Any:
    """Called after a reload swapped in a new config and pipeline. May be async."""


@hookspec
def turn_started(engine: Engine, turn: Turn) -> Any:
    """Called when a chat turn starts running (its prompt is built). May be async."""


@hookspec
def reload_failed(engine: Engine, error: str) -> Any:
    """Called when a reload was rejected; the running config stays. May be async."""


@hookspec
def rate_limited(engine: Engine, request: web.Request, reason: str) -> Any:
    """Called when a request is refused with 429 (``rate``, ``streams`` or ``auth``)."""


@hookspec
def turn_completed(engine: Engine, turn: Turn) -> Any:
    """Called after each chat turn ends (completed, interrupted or failed). May be async."""
