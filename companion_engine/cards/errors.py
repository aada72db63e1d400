"""Why a card was rejected, in words a user can act on.

Every parser in ``companion_engine.cards`` raises ``CardError`` and nothing
else for bad input, so callers (the upload route, the folder scanner) have a
single thing to catch. ``status`` is the HTTP status a route should answer with:
400 for bytes that cannot be decoded, 415 for a file that is not a card format
at all, 422 for a decoded object that is not a valid card, 413 for size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One validation finding: where in the document (``data.name``) and what."""

    path: str
    message: str
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.line is not None:
            d["line"] = self.line
        return d

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(slots=True)
class CardError(Exception):
    """A file or object that cannot be imported as a character card."""

    message: str
    status: int = 422
    issues: list[Issue] = field(default_factory=list)
    line: int | None = None

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    def __str__(self) -> str:
        return self.message

    @property
    def detail(self) -> list[dict[str, Any]] | str:
        """What the API puts in ``detail``: the issues, or the message alone."""
        return [i.as_dict() for i in self.issues] if self.issues else self.message
