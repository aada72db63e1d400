"""A new conversation's greeting: the card's ``first_mes`` or an alternate, stored once
with the card's other greetings as its swipes (SillyTavern shows alternate greetings
as swipes of the first message)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from companion_engine.cards.macros import substitute
from companion_engine.errors import ApiError
from companion_engine.store import StoredMessage, Swipe

if TYPE_CHECKING:
    from companion_engine.cards.model import Character
    from companion_engine.turn import Turn



def greetings(character: Character, user_name: str, *, group: bool = False) -> list[str]:
    """A card's greetings as they open a conversation: ``first_mes``, then the
    ``alternate_greetings`` (and, in a group chat, the V3 ``group_only_greetings``),
    macros expanded. Empty ones stay in place so indices match the card's."""
    texts = [character.first_mes, *character.alternate_greetings]
    if group:
        texts += character.group_only_greetings
    return [substitute(t.replace("\r\n", "\n"), character.display_name, user_name).strip()
            for t in texts]


def greeting_message(character: Character, user_name: str, index: int = 0, *,
                     group: bool = False, chosen: str | None = None) -> StoredMessage | None:
    """The stored greeting of a new conversation: greeting ``index`` chosen, the card's other
    greetings kept as its swipes (SillyTavern shows alternate greetings as swipes of the
    first message). ``chosen`` is the text the prompt used, when a stage built it. None
    when the card has no such greeting text."""
    texts = greetings(character, user_name, group=group)
    if not 0 <= index < len(texts):
        raise ApiError(409, f"greeting {index} does not exist: {character.name} has "
                            f"{len(texts) - 1} alternate greeting(s)",
                       {"loc": "greeting", "max": len(texts) - 1})
    if chosen is not None:
        texts[index] = chosen
    if not texts[index]:
        return None
    now = time.time()
    meta = {"greeting": True, "character_id": character.id,
            "character": character.display_name}
    kept = [(i, t) for i, t in enumerate(texts) if t]
    swipes = [Swipe(t, created_at=now, meta={**meta, "greeting_index": i}) for i, t in kept]
    at = [i for i, _ in kept].index(index)
    message = StoredMessage("assistant", texts[index], created_at=now)
    return message.choose(swipes, at) if len(swipes) > 1 else StoredMessage(
        "assistant", texts[index], created_at=now, meta=swipes[0].meta)


def opening_of(turn: Turn) -> StoredMessage | None:
    """What a turn that opens a conversation stores first: the greeting the
    ``first_message`` stage put in its prompt (``turn.greeting``), with the card's
    other greetings as its swipes."""
    if not turn.greeting:
        return None
    if turn.character is None:
        return StoredMessage("assistant", turn.greeting, meta={"greeting": True})
    try:
        return greeting_message(turn.character, turn.user_name, turn.greeting_index,
                                chosen=turn.greeting)
    except ApiError:  # a stage chose a greeting the card does not list: keep its text
        return StoredMessage("assistant", turn.greeting, meta={"greeting": True})
