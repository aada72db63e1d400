"""Errors with a place in the public contract.

``ApiError`` is raised by handlers and rendered by the error middleware as
``{"success": false, "error": ..., "detail": ...}``. ``ConfigError`` carries
``file:line: key.path: message`` problems. ``StartupError`` stops ``serve``
cleanly with one line.
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
