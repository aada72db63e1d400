"""Which voice says what in one turn: the profile's ``speech.voices``, the card, the request.

Layers, later ones winning: the profile's ``speech.voices: {dialogue, narration}``,
then the character card's ``extensions.companion.voice`` (a voice name, meaning
the dialogue voice, or ``{dialogue, narration}``), then the client's ``voice``
for this turn (the dialogue voice). An unset dialogue voice is the backend's
own; an unset narration voice is the dialogue voice; ``none`` leaves that part
unspoken. Narration and dialogue are told apart (``speech.roles``) only when a
profile or card names ``voices`` with a narration entry of its own.

The card may also carry ``extensions.companion.lexicon`` (merged over the
profile's ``speech.lexicon``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from companion_engine.patterns import VOICE_NAME

if TYPE_CHECKING:
    from companion_engine.cards.model import Character
    from companion_engine.config import SpeechConfig
    from companion_engine.turn import Turn

#: A role whose voice is this is not spoken.
SILENT = "none"


@dataclass(frozen=True, slots=True)
class Cast:
    """The voices of one turn. ``None``: the backend's configured voice."""

    #: Narration and dialogue are told apart (else every sentence is one dialogue piece).
    roles: bool = False
    dialogue: str | None = None
    narration: str | None = None

    def voice(self, role: str) -> str | None:
        """The voice for ``role`` (``SILENT``: do not speak it)."""
        if role == "narration":
            return self.narration if self.narration is not None else self.dialogue
        return self.dialogue


def companion_extension(character: Character | None) -> Mapping[str, Any]:
    """The card's ``extensions.companion`` mapping (empty when absent or not a mapping)."""
    if character is None:
        return {}
    ext = character.extensions.get("companion") if isinstance(character.extensions, dict) \
        else None
    return ext if isinstance(ext, Mapping) else {}


def _name(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and (value == SILENT or VOICE_NAME.match(value)):
        return value
    logger.warning("ignoring {} {!r}: not a voice name", where, value)
    return None


def cast_for(turn: Turn, speech: SpeechConfig) -> Cast:
    """The voices of ``turn``: profile, then card, then request."""
    dialogue = narration = None
    roles = False
    if speech.voices is not None:
        dialogue, narration = speech.voices.dialogue, speech.voices.narration
        roles = True
    card = companion_extension(turn.character).get("voice")
    if isinstance(card, Mapping):
        if "dialogue" in card:
            dialogue = _name(card["dialogue"], "card voice.dialogue")
        if "narration" in card:
            narration = _name(card["narration"], "card voice.narration")
            roles = True
    elif card is not None:
        dialogue = _name(card, "card voice") or dialogue
    if turn.voice:
        dialogue = turn.voice
    if dialogue == SILENT and not roles:
        dialogue = None  # "none" for the only voice would silence a speaking turn
    return Cast(roles=roles, dialogue=dialogue, narration=narration)


def card_lexicon(character: Character | None) -> dict[str, str]:
    """The card's own pronunciations (``extensions.companion.lexicon``), valid entries only."""
    lex = companion_extension(character).get("lexicon")
    if not isinstance(lex, Mapping):
        return {}
    return {k: v for k, v in lex.items()
            if isinstance(k, str) and isinstance(v, str) and k.strip() and len(k) <= 100
            and "\n" not in k and len(v) <= 400}
