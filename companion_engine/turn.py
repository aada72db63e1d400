"""The per-turn context object every stage receives."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from companion_engine.cards.model import Character
    from companion_engine.config import Profile
    from companion_engine.engine import Engine

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    """One chat message as LiteLLM and the API see it."""

    role: Role
    content: str


@dataclass(slots=True)
class LoreActivation:
    """One lorebook entry that fired this turn (shown by ``/api/prompt/preview``)."""

    id: int | str | None
    comment: str
    position: str
    order: int
    source: str = "character"
    depth: int | None = None
    role: str | None = None
    #: The key that activated it (or ``constant`` / ``@@activate``).
    matched: str | None = None
    tokens: int = 0


@dataclass
class Turn:
    """Everything one chat turn knows, passed to every stage.

    Prompt builders append to ``messages``; lorebook injectors record what they
    activated in ``lore``; any stage may keep per-turn state in ``stash`` under a
    key named after itself.
    """

    profile: Profile
    user_message: str
    character: Character | None = None
    user_name: str = "User"
    history: list[Message] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    conversation_id: str | None = None
    model: str = ""
    engine: Engine | None = None
    #: Entries the lorebook injectors activated, in prompt order.
    lore: list[LoreActivation] = field(default_factory=list)
    #: Text a prompt builder wants placed before/after the character definition,
    #: keyed by position name (``before_char``, ``after_char``); filled by lorebook
    #: injectors, consumed by ``character_definition``.
    slots: dict[str, list[str]] = field(default_factory=dict)
    #: Messages to insert into the history at a depth: (depth, role, content).
    depth_injections: list[tuple[int, Role, str]] = field(default_factory=list)
    #: The greeting that opened this conversation, when the turn started one.
    greeting: str | None = None
    stash: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def char_name(self) -> str:
        """The name ``{{char}}`` expands to."""
        if self.character is None:
            return "Assistant"
        return self.character.display_name
