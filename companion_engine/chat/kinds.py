"""Kinds of turn: what a regenerate, a continue or a group member's reply changes in a
plain chat turn — the tail of its prompt, its text, and how it is stored.

The chat runner calls ``arrange`` once the prompt is assembled, ``before`` once the
stream is open (before the LLM call), ``source`` on the LLM's text and ``deltas`` on
the reply's text after the output sanitizers (the text only a kind adds, such as a
continuation's space, is never trimmed by them), and ``after`` when the turn ended,
however it ended. One class per kind:

- ``NewMessage``: the user's message (with a new conversation's greeting, written
  once even when first turns race), then the reply appended;
- ``Reply``: no new message, a character speaks (a group member, or a reply to the
  last user message);
- ``Regenerate``: the reply becomes the chosen swipe of the message it replaces;
- ``Continue``: the reply is appended to the (interrupted) message it continues.

A failed turn's reply is stored with ``status: "error"`` and its error, so the API
shows it; the history leaves failed turns out of later prompts (``turns.py``).
A failed regenerate or continue changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from companion_engine.chat.greetings import opening_of
from companion_engine.store import StoredMessage

if TYPE_CHECKING:
    from companion_engine.store import Store
    from companion_engine.turn import Turn, TurnResult

#: A continuation that starts with one of these is glued to the text it continues.
CLOSING = frozenset(",.;:!?…)]}'\"’”»-—–~*")


def character_meta(turn: Turn) -> dict[str, Any]:
    """Who spoke: kept on every reply, so a group's history can name its speakers."""
    if turn.character is None:
        return {}
    return {"character_id": turn.character.id or None, "character": turn.character.display_name}


def reply_message(turn: Turn, result: TurnResult) -> StoredMessage:
    """The stored form of a turn's reply: text, status, and what produced it."""
    meta: dict[str, Any] = {"model": turn.model, **character_meta(turn)}
    for key in ("usage", "finish_reason", "error"):
        value = getattr(result, key)
        if value:
            meta[key] = value
    return StoredMessage("assistant", result.content, status=result.status,
                         created_at=time.time(), meta=meta)


class TurnKind:
    """The hooks, doing nothing: a turn that is not stored."""

    #: In a group chat, a reply that starts with its speaker's ``Name:`` loses it (the
    #: history shows names that way, and models imitate it).
    speaker_prefix: str | None = None
    #: System messages placed right after the chat history (and its depth-0
    #: injections), before what follows it (post-history instructions): SillyTavern's
    #: group nudge and continue nudge.
    nudges: list[str]
    #: Move the turn's last chat message to the very end of the prompt, for the provider
    #: to continue it (assistant prefill).
    prefill: bool = False
    #: A group chat's turn.
    group: bool = False

    def __init__(self) -> None:
        self.nudges = []

    def arrange(self, turn: Turn) -> None:
        """The assembled prompt's tail: nudges, prefill."""
        at = turn.user_index
        if at is None:
            return
        messages = turn.messages
        if self.nudges:
            at = _after_depth_zero(turn, at)
            messages[at:at] = [{"role": "system", "content": n} for n in self.nudges]
        if self.prefill:
            entry = messages.pop(turn.user_index or 0)
            messages.append(entry)

    async def before(self, store: Store, turn: Turn) -> None:
        """Before the LLM call."""

    async def after(self, store: Store, turn: Turn, result: TurnResult) -> None:
        """Once the turn ended (complete, interrupted or failed)."""

    def source(self, source: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        """The LLM's text before the output sanitizers (to look at, not to change)."""
        return source

    def deltas(self, source: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        """The reply's text as this kind of turn streams and stores it."""
        if self.speaker_prefix:
            return strip_prefix(source, self.speaker_prefix)
        return source


class NewMessage(TurnKind):
    """The user's message, then the reply (the ``/api/chat`` turn). A turn that opens a
    conversation stores its greeting first — once, however many first turns race."""

    async def before(self, store: Store, turn: Turn) -> None:
        user = StoredMessage("user", turn.user_message, created_at=time.time(),
                             meta={"user_name": turn.user_name})
        opening = opening_of(turn) if not turn.history else None
        await store.append_messages(turn.conversation_id or "", [user],
                                    character_id=_character_id(turn),
                                    opening=[opening] if opening else [])

    async def after(self, store: Store, turn: Turn, result: TurnResult) -> None:
        await store.append_messages(turn.conversation_id or "", [reply_message(turn, result)],
                                    character_id=_character_id(turn))


class Reply(NewMessage):
    """A character speaks without a new message from the user."""

    async def before(self, store: Store, turn: Turn) -> None:
        pass


class Regenerate(TurnKind):
    """A new reply in place of message ``message_id``, the old one kept as a swipe."""

    def __init__(self, message_id: str) -> None:
        super().__init__()
        self.message_id = message_id

    async def after(self, store: Store, turn: Turn, result: TurnResult) -> None:
        if result.status == "error" or not result.content:
            return
        await store.add_swipe(turn.conversation_id or "", self.message_id,
                              reply_message(turn, result))


class Continue(TurnKind):
    """More text for message ``message_id``: the reply is appended to it.

    What goes between the old text and the new: with the nudge, ``joiner`` (a space
    by default) when the old does not end in white space and the new starts with a
    word (a model asked for the rest of a message answers without the space a
    continuation needs); with prefill, the white space the model itself began with
    (an output sanitizer may trim a reply's start).
    """

    def __init__(self, message_id: str, joiner: str = "") -> None:
        super().__init__()
        self.message_id = message_id
        self.joiner = joiner
        #: The white space the LLM's text began with (seen before the sanitizers).
        self._lead: str | None = None

    def source(self, source: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        return self._watch(source)

    async def _watch(self, source: AsyncIterator[str]) -> AsyncIterator[str]:
        async for piece in source:
            if self._lead is None and piece.strip():
                self._lead = piece[:len(piece) - len(piece.lstrip())]
            yield piece

    def deltas(self, source: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        return self._joined(super().deltas(source, turn))

    async def _joined(self, source: AsyncIterator[str]) -> AsyncIterator[str]:
        first = True
        async for piece in source:
            if first and piece:
                first = False
                if not piece[0].isspace():
                    if self.prefill:
                        piece = (self._lead or "") + piece
                    elif self.joiner and piece[0] not in CLOSING:
                        piece = self.joiner + piece
            yield piece

    async def after(self, store: Store, turn: Turn, result: TurnResult) -> None:
        if not result.content:
            return
        status = "interrupted" if result.status == "error" else result.status
        meta: dict[str, Any] = {"continued": True, "model": turn.model}
        if result.finish_reason:
            meta["finish_reason"] = result.finish_reason
        await store.extend_message(turn.conversation_id or "", self.message_id, result.content,
                                   status=status, meta=meta)


def _after_depth_zero(turn: Turn, at: int) -> int:
    """The index just past the chat's last message and the depth-0 injections after it."""
    zero = [(role, text) for depth, role, text in turn.depth_injections if depth <= 0]
    at += 1
    while at < len(turn.messages) and zero and (
            turn.messages[at]["role"], turn.messages[at]["content"]) in zero:
        zero.remove((turn.messages[at]["role"], turn.messages[at]["content"]))
        at += 1
    return at


def _character_id(turn: Turn) -> str | None:
    return turn.character.id or None if turn.character is not None else None


async def strip_prefix(source: AsyncIterator[str], prefix: str) -> AsyncIterator[str]:
    """``source`` without a leading ``prefix`` (``"Name:"``) and the blanks after it.
    Text is held back only while it could still be that prefix."""
    held: str | None = ""
    dropped = False
    async for piece in source:
        if held is None:
            yield piece
            continue
        held += piece
        if not dropped:
            text = held.lstrip()
            if len(text) < len(prefix) and prefix.startswith(text):
                continue  # could still be the prefix: wait for more
            if not text.startswith(prefix):
                out, held = held, None
                yield out
                continue
            held, dropped = text[len(prefix):], True
        held = held.lstrip()
        if held:
            out, held = held, None
            yield out
    if held and not dropped:
        yield held  # the whole reply was a beginning of the prefix, and no more
