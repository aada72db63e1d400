"""Errors with a place in the public contract.

``ApiError`` is raised by handlers and rendered by the error middleware as
``{"success": false, "error": ..., "detail": ...}``. ``ConfigError`` carries
``file:line: key.path: message`` problems. ``StartupError`` stops ``serve``
cleanly with one line. ``StageError`` names the stage (and its plugin) that
failed mid-turn; ``UnknownVoiceError`` is what a TTS backend raises for a voice
it does not have (422 from ``/api/tts``, ``audio_error`` in a turn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """An HTTP error with a clear message for the client."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail if detail is not None else error
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class Problem:
    """One config problem, located in a file."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more config problems; ``str()`` gives one ``file:line: message`` per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StartupError(Exception):
    """The server cannot start; the message says why in one line."""


class TurnError(Exception):
    """Ends a turn with an ``error`` event of this ``type`` (provider or stage failures).

    Passes through every stage untouched: a provider error that reaches a sanitizer
    from upstream is still the provider's, not the sanitizer's.
    """

    type: str = "stage_error"


class StageError(TurnError):
    """A pipeline stage failed mid-turn; the message names the stage and its plugin.

    The pipeline wraps every stage when it is built, so whatever a stage raises
    reaches the client and the log as one of these.
    """

    type = "stage_error"

    def __init__(self, message: str, *, stage: str | None = None,
                 plugin: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.plugin = plugin

    @classmethod
    def wrap(cls, exc: BaseException, stage: str, plugin: str | None) -> StageError:
        """``exc`` as raised by ``stage``: ``stage 'x' (plugin p) failed: Type: message``."""
        if isinstance(exc, StageError):
            return exc
        by = f" (plugin {plugin})" if plugin else ""
        error = cls(f"stage {stage!r}{by} failed: {type(exc).__name__}: {exc}",
                    stage=stage, plugin=plugin)
        error.__cause__ = exc
        return error


class UnknownVoiceError(ValueError):
    """A TTS backend was asked for a voice it does not have."""
