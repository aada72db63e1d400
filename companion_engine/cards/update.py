"""Partial card updates as JSON Merge Patch (RFC 7386) over the card's ``data``.

A patch names only what changes: ``{"description": "..."}`` edits one field,
``{"extensions": {"x/y": null}}`` removes one extension key and keeps the
others, a list (``tags``, ``character_book.entries``) is replaced whole. The
merged card is validated like an import, so an update can never store a card
that the store could not read back.
"""

from __future__ import annotations

from typing import Any

from companion_engine.cards.errors import CardError, Issue
from companion_engine.cards.export import card_data, v2_card, v3_card
from companion_engine.cards.formats import ParsedCard, card_from_object, ensure_unicode
from companion_engine.cards.model import Character

#: Card fields a patch may set (V2 + V3); anything else is most likely a typo.
CARD_FIELDS = frozenset(
    name for name, info in Character.model_fields.items() if not info.exclude and name != "id"
)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def combine_patches(first: Any, second: Any) -> Any:
    """One patch doing ``first`` then ``second`` (``second``'s nulls still delete)."""
    if isinstance(first, dict) and isinstance(second, dict):
        return {**first, **{k: combine_patches(first.get(k), v) for k, v in second.items()}}
    return second


def apply_patch(character: Character, patch: dict[str, Any]) -> ParsedCard:
    """``character`` with ``patch`` merged into its data, validated; ``CardError`` if not."""
    ensure_unicode(patch)
    unknown = sorted(k for k in patch if k not in CARD_FIELDS and k not in character.model_extra)
    if unknown:
        raise CardError(
            f"unknown card field(s): {', '.join(unknown)}",
            issues=[Issue(k, "not a card field (custom data belongs in `extensions`)")
                    for k in unknown],
        )
    data = merge_patch(card_data(character), patch)
    envelope = v3_card(character) if character.source_format == "v3" else v2_card(character)
    envelope["data"] = data
    return replace_card(character, envelope)


def replace_card(character: Character, card: dict[str, Any]) -> ParsedCard:
    """A whole new card for an existing character, keeping its store identity."""
    parsed = card_from_object(card)
    new = parsed.character
    new.id = character.id
    new.source_file = character.source_file
    if character.source_format == "yaml":
        new.source_format = "yaml"
    return parsed
