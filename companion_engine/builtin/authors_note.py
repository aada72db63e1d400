"""The ``authors_note`` stage: SillyTavern's Author's Note and the card's character note.

The Author's Note is a text placed in the chat ``depth`` messages from its end
(or around the main prompt) every ``frequency`` user messages, wrapped by the
lorebook's ``an_top`` / ``an_bottom`` entries. A conversation may override it
(``PUT /api/conversations/{id}/authors_note``, kept in its state under
``"authors_note"``). The card's character note (``extensions.depth_prompt``:
``{prompt, depth, role}``) goes in every turn. Both are depth injections the
``history`` builder places, ahead of the lorebook's at the same depth and role,
as SillyTavern orders its extension prompts. Place this stage after
``lorebook`` and before ``history``. See ``docs/prompt.md``.

The override is set with ``PUT``/``DELETE /api/conversations/{id}/authors_note``
(the conversation routes); this stage only reads it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from companion_engine import hookimpl
from companion_engine.prompting import expand
from companion_engine.stages import PromptBuilder, StageOptions
from companion_engine.turn import Message, Role, Turn

STATE_KEY = "authors_note"
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


class NoteSettings(StageOptions):
    """The Author's Note (a conversation's override has the same fields)."""

    text: str = Field(default="", max_length=20_000)
    #: Insert on every N-th user message (1: every turn; 0: never).
    frequency: int = Field(default=1, ge=0, le=1000)
    depth: int = Field(default=4, ge=0, le=1000)
    role: Role = "system"
    #: ``in_chat`` (at ``depth``), ``before_main`` or ``after_main`` (around the main prompt).
    position: Literal["in_chat", "before_main", "after_main"] = "in_chat"


def due(frequency: int, user_messages: int) -> bool:
    """SillyTavern's rule: every turn at 1, never at 0, else on every N-th user message."""
    if frequency == 1:
        return True
    return frequency > 0 and user_messages > 0 and user_messages % frequency == 0


def character_note(card: Any) -> tuple[str, int, Role] | None:
    """The card's ``extensions.depth_prompt`` as (text, depth, role), when it has one."""
    if card is None:
        return None
    note = card.extensions.get("depth_prompt") if isinstance(card.extensions, dict) else None
    if not isinstance(note, dict) or not isinstance(note.get("prompt"), str):
        return None
    depth = note.get("depth", 4)
    depth = depth if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 0 else 4
    role = note.get("role", "system")
    return note["prompt"], min(depth, 1000), role if role in ROLES else "system"


class AuthorsNote(PromptBuilder):
    """The Author's Note (profile or per-conversation) and the card's character note."""

    name: ClassVar[str] = "authors_note"
    description: ClassVar[str] = ("SillyTavern's Author's Note and the card's character note "
                                  "(extensions.depth_prompt), at a depth in the chat")

    class Options(NoteSettings):
        #: Use the card's character note (``extensions.depth_prompt``).
        character_note: bool = True

    async def settings(self, turn: Turn) -> NoteSettings:
        """The profile's note, overridden by the conversation's when it has one."""
        o = self.options
        assert isinstance(o, AuthorsNote.Options)
        base = NoteSettings(**o.model_dump(exclude={"character_note"}))
        if turn.engine is None or not turn.conversation_id:
            return base
        stored = (await turn.engine.store.get_state(turn.conversation_id)).get(STATE_KEY)
        if not isinstance(stored, dict):
            return base
        try:
            return NoteSettings(**{**base.model_dump(), **stored})
        except ValueError:
            return base  # a malformed override never breaks a turn

    async def build(self, turn: Turn) -> None:
        o = self.options
        assert isinstance(o, AuthorsNote.Options)
        note = await self.settings(turn)
        injections: list[tuple[int, Role, str]] = []
        users = sum(1 for m in turn.history if m["role"] == "user") + 1
        if due(note.frequency, users):
            top = "\n".join(turn.slots.get("an_top", []))
            bottom = "\n".join(turn.slots.get("an_bottom", []))
            text = expand(turn, f"{top}\n{note.text}\n{bottom}").strip()
            if text and note.position == "in_chat":
                injections.append((note.depth, note.role, text))
            elif text:
                _around_main(turn, {"role": note.role, "content": text}, note.position)
        if o.character_note:
            found = character_note(turn.character)
            if found is not None:
                text, depth, role = found
                text = expand(turn, text).strip()
                if text:
                    injections.append((depth, role, text))
        turn.depth_injections[0:0] = injections


def _around_main(turn: Turn, message: Message, position: str) -> None:
    at = next((i for i, m in enumerate(turn.messages) if m is turn.main_prompt), None)
    if at is None:
        turn.messages.insert(0, message)
    else:
        turn.messages.insert(at + (1 if position == "after_main" else 0), message)


@hookimpl
def register_prompt_builders() -> list[type[PromptBuilder]]:
    return [AuthorsNote]
