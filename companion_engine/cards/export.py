"""Writing cards: V2/V3 JSON, PNG with ``chara`` + ``ccv3`` chunks, and YAML.

The output is what SillyTavern itself writes: a V2 "hybrid" (V1 fields repeated
at the root for V1-only readers, the full card under ``data``) in ``chara``,
and the same card labelled V3 in ``ccv3``. Every field the card came with is
written back, unknown ones included, so import -> export -> import is lossless.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml
from pydantic import BaseModel

from companion_engine.cards import png
from companion_engine.cards.formats import V1_FIELDS, V2_SPEC, V3_SPEC, Container
from companion_engine.cards.model import Character


def _prune(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    """Drop optional fields the card never had (``None`` and not set), keep the rest."""
    for name in type(model).model_fields:
        if dumped.get(name, 0) is None and name not in model.model_fields_set:
            del dumped[name]
    return dumped


def card_data(character: Character) -> dict[str, Any]:
    """The card's ``data`` object: every card field and every unknown key, no store fields."""
    data = _prune(character, character.model_dump(mode="json", exclude={"id"}))
    book = character.character_book
    if book is not None:
        dumped = _prune(book, data["character_book"])
        dumped["entries"] = [_prune(e, d) for e, d in zip(book.entries, dumped["entries"],
                                                          strict=True)]
    return data


def _envelope(character: Character, spec: str, version: str) -> dict[str, Any]:
    data = card_data(character)
    card: dict[str, Any] = dict(character.root_extra)
    card.update({k: data.get(k, "") for k in V1_FIELDS})
    card["creatorcomment"] = data.get("creator_notes", "")
    card["tags"] = data.get("tags", [])
    card.update(spec=spec, spec_version=version, data=data)
    return card


def v2_card(character: Character) -> dict[str, Any]:
    """A ``chara_card_v2`` object (V3-only fields ride along inside ``data``)."""
    return _envelope(character, V2_SPEC, "2.0")


def v3_card(character: Character) -> dict[str, Any]:
    return _envelope(character, V3_SPEC, "3.0")


def json_bytes(card: dict[str, Any]) -> bytes:
    return json.dumps(card, ensure_ascii=False, indent=2).encode("utf-8")


def _chunk_text(card: dict[str, Any]) -> str:
    raw = json.dumps(card, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


def png_bytes(character: Character, image: bytes | None = None) -> bytes:
    """``image`` (or a generated placeholder) carrying the card in ``chara`` and ``ccv3``."""
    base = image if image is not None else png.placeholder_png(character.name)
    return png.embed_texts(base, [("chara", _chunk_text(v2_card(character))),
                                  ("ccv3", _chunk_text(v3_card(character)))])


def file_bytes(character: Character, container: Container, image: bytes | None = None
               ) -> bytes:
    """The card as a store file of ``container`` type (keeps a V3 card V3 in JSON)."""
    if container == "png":
        return png_bytes(character, image)
    if container == "yaml":
        text = yaml.safe_dump(card_data(character), allow_unicode=True, sort_keys=False,
                              width=100)
        return text.encode("utf-8")
    card = v3_card(character) if character.source_format == "v3" else v2_card(character)
    return json_bytes(card)
