"""Who speaks next in a group chat: SillyTavern's reply orders.

- ``natural``: the members whose name the message mentions, in the order the
  message mentions them; then each other member with probability
  ``talkativeness`` (the card's ``extensions.talkativeness``, default 0.5), in
  random order; if that leaves nobody, one member at random (among those with a
  talkativeness above 0 when there are any). Without a new user message the last
  speaker does not answer itself (unless ``allow_self_responses``).
- ``list``: every member, in the group's order.
- ``manual``: nobody on their own; a client names the speaker.

Names are matched as SillyTavern does, word by word, case-insensitively (words are
``\\w+`` runs; ours are Unicode, SillyTavern's ASCII only), against the card's
``name`` and its V3 ``nickname``. ``tests/vectors/st_group_natural.json`` holds
vectors computed by SillyTavern's own ``activateNaturalOrder``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from companion_engine.cards.model import Character
    from companion_engine.store import ReplyOrder

#: SillyTavern's ``talkativeness_default``.
DEFAULT_TALKATIVENESS = 0.5
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """SillyTavern's ``extractAllWords``: the lower-cased words of ``text``."""
    return [w.lower() for w in _WORD.findall(text)]


def talkativeness(character: Character) -> float:
    """How likely the character speaks up unprompted (0..1); cards store it as a string."""
    raw = character.extensions.get("talkativeness", character.root_extra.get("talkativeness"))
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return DEFAULT_TALKATIVENESS
    if value != value:  # NaN
        return DEFAULT_TALKATIVENESS
    return min(1.0, max(0.0, value))


def _names(character: Character) -> set[str]:
    out = set(words(character.name))
    if character.nickname:
        out |= set(words(character.nickname))
    return out


def natural_order(members: Sequence[Character], text: str, *, last_speaker: str | None,
                  user_input: bool, allow_self_responses: bool = False,
                  rng: random.Random | None = None) -> list[Character]:
    """SillyTavern's ``activateNaturalOrder``: who answers ``text``, in order."""
    rng = rng or random.Random()
    banned = None if user_input or allow_self_responses else last_speaker
    activated: list[Character] = []
    names = {m.id: _names(m) for m in members}
    for word in words(text):
        for member in members:
            if member.id == banned:
                continue
            if word in names[member.id]:
                activated.append(member)
                break
    chatty = []
    shuffled = list(members)
    rng.shuffle(shuffled)
    for member in shuffled:
        if member.id == banned:
            continue
        t = talkativeness(member)
        if t >= rng.random():
            activated.append(member)
        if t > 0:
            chatty.append(member)
    pool = chatty or list(members)
    if not activated and pool:
        activated.append(pool[int(rng.random() * len(pool))])
    seen: set[str] = set()
    return [m for m in activated if not (m.id in seen or seen.add(m.id))]  # type: ignore[func-returns-value]


def speakers(order: ReplyOrder, members: Sequence[Character], text: str, *,
             last_speaker: str | None, user_input: bool, allow_self_responses: bool = False,
             rng: random.Random | None = None) -> list[Character]:
    """Who replies, in order, under ``order`` (``manual``: nobody)."""
    if order == "list":
        return list(members)
    if order == "manual":
        return []
    return natural_order(members, text, last_speaker=last_speaker, user_input=user_input,
                         allow_self_responses=allow_self_responses, rng=rng)


def next_speaker(order: ReplyOrder, members: Sequence[Character], text: str, *,
                 last_speaker: str | None, allow_self_responses: bool = False,
                 rng: random.Random | None = None) -> Character | None:
    """The one member who speaks when a client asks for a reply without naming one:
    ``list``, the member after the last speaker; ``natural``, the first it activates."""
    if not members or order == "manual":
        return None
    if order == "list":
        ids = [m.id for m in members]
        after = ids.index(last_speaker) + 1 if last_speaker in ids else 0
        return members[after % len(members)]
    chosen = natural_order(members, text, last_speaker=last_speaker, user_input=False,
                           allow_self_responses=allow_self_responses, rng=rng)
    return chosen[0] if chosen else None
