"""The one internal model every card format is normalised to.

Card data is user content, not config: unknown keys are *kept* (``extra="allow"``)
so that a re-export loses nothing. Field names follow Character Card V2/V3.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CardModel(BaseModel):
    """Base for card data: keeps unknown keys for lossless round-trips."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class LoreEntry(CardModel):
    """One lorebook (World Info) entry, V2 ``character_book.entries[]`` plus V3 additions."""

    keys: list[str] = Field(default_factory=list)
    content: str = ""
    extensions: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    insertion_order: int = 100
    case_sensitive: bool | None = None
    name: str | None = None
    priority: int | None = None
    id: int | str | None = None
    comment: str | None = None
    selective: bool = False
    secondary_keys: list[str] = Field(default_factory=list)
    constant: bool = False
    #: ``before_char`` | ``after_char`` (V2); SillyTavern keeps finer positions in
    #: ``extensions.position`` (0..7) and ``extensions.depth`` / ``extensions.role``.
    position: str | None = None
    #: V3: keys are regular expressions.
    use_regex: bool = False


class CharacterBook(CardModel):
    """A lorebook: the card's ``character_book`` or a standalone lorebook file."""

    name: str | None = None
    description: str | None = None
    scan_depth: int | None = None
    token_budget: int | None = None
    recursive_scanning: bool | None = None
    extensions: dict[str, Any] = Field(default_factory=dict)
    entries: list[LoreEntry] = Field(default_factory=list)


class Character(CardModel):
    """A character card, whatever file it came from.

    ``id`` is the store id (``^[a-z0-9][a-z0-9_-]{0,63}$``); ``source_format`` is
    ``v1`` | ``v2`` | ``v3`` | ``yaml`` and ``source_file`` the file name in the store.
    """

    id: str = ""
    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    creator_notes: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    alternate_greetings: list[str] = Field(default_factory=list)
    character_book: CharacterBook | None = None
    tags: list[str] = Field(default_factory=list)
    creator: str = ""
    character_version: str = ""
    extensions: dict[str, Any] = Field(default_factory=dict)
    # V3 additions
    nickname: str | None = None
    assets: list[dict[str, Any]] | None = None
    creator_notes_multilingual: dict[str, str] | None = None
    source: list[str] | None = None
    group_only_greetings: list[str] = Field(default_factory=list)
    creation_date: int | None = None
    modification_date: int | None = None
    # Where it came from (not part of the card data on export).
    source_format: str = Field(default="v2", exclude=True)
    source_file: str | None = Field(default=None, exclude=True)
    #: Keys found at the root of a V1/hybrid file besides the card fields.
    root_extra: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @property
    def display_name(self) -> str:
        """What ``{{char}}`` expands to: the V3 nickname if set, else the name."""
        return self.nickname or self.name
