"""The card shapes as JSON Schema, for the bodies of ``POST``/``PUT /api/characters``.

Written from ``Character`` (the model every card is read into) and the rules of
``formats.card_from_object``: a V1 card is flat (its fields at the root, ``spec``
absent or null), a V2/V3 card is an envelope (``spec``, ``data``); ``name`` is
required and not blank; store bookkeeping keys are ignored. Each schema is the card
as a client should write it. The server is more forgiving on purpose, as with card
files: the slips real cards carry (``null`` or a number for a text field, a string
for a list, ``"5"`` for 5, Pygmalion's ``char_*`` names) are read with a warning.
"""

from __future__ import annotations

from typing import Any

from companion_engine.cards.formats import FLAT_FIELDS, INTERNAL_FIELDS, V2_SPEC, V3_SPEC
from companion_engine.cards.model import Character
from companion_engine.cards.update import CARD_FIELDS
from companion_engine.patterns import NOT_BLANK, ref

REF = "#/components/schemas/{model}"
NAME = {"type": "string", "pattern": NOT_BLANK, "description": "The character's name (not "
        "blank); the id is made from it."}
LIVE2D = {"live2d_model_id": {"type": ["string", "null"]},
          "live2d_model_path": {"type": ["string", "null"]}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    schema = {k: v for k, v in schema.items() if k not in ("default", "title")}
    choices = schema.get("anyOf")
    if choices is not None:
        return schema if {"type": "null"} in choices else {**schema,
                                                            "anyOf": [*choices, {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


def card_schemas() -> dict[str, dict[str, Any]]:
    """Named schemas: ``CardBody`` and ``CardUpdate`` (the two bodies) and what they use."""
    model = Character.model_json_schema(mode="validation", ref_template=REF)
    named: dict[str, dict[str, Any]] = dict(model.pop("$defs", {}))
    fields = {k: {p: q for p, q in v.items() if p != "title"}
              for k, v in model["properties"].items() if k not in INTERNAL_FIELDS}
    fields["name"] = NAME
    named["CardData"] = {
        "type": "object", "required": ["name"], "properties": fields,
        "additionalProperties": True,
        "description": "A card's data (Character Card V2/V3 `data`): unknown keys are kept.",
    }
    named["CardV1"] = {
        "type": "object", "required": ["name"],
        "properties": {**{k: fields[k] for k in FLAT_FIELDS},
                       "creatorcomment": {"type": "string"}, "spec": {"type": "null"}},
        "additionalProperties": True,
        "description": "A TavernAI V1 card: the fields at the root; other root keys are kept.",
    }
    named["CardEnvelope"] = {
        "type": "object", "required": ["spec", "data"],
        "properties": {"spec": {"enum": [V2_SPEC, V3_SPEC]}, "spec_version": {},
                       "data": ref("CardData")},
        "additionalProperties": True,
        "description": "A Character Card V2 or V3: `{spec, spec_version, data}`.",
    }
    named["Card"] = {"oneOf": [ref("CardV1"), ref("CardEnvelope")]}
    named["CardPatch"] = {
        "type": "object", "minProperties": 1,
        "properties": {k: (NAME if k == "name" else _nullable(v))
                       for k, v in fields.items() if k in CARD_FIELDS},
        "additionalProperties": False,
        "description": "Changed card fields, a JSON Merge Patch over the card's data: `null` "
                       "removes a field (`name` stays), objects merge, lists are replaced. "
                       "Keys the card already carries beyond these may be patched too.",
    }
    named["CardBody"] = {"anyOf": [
        {"type": "object", "required": ["character_data"],
         "properties": {"character_data": ref("Card"), **LIVE2D},
         "additionalProperties": False},
        {"allOf": [ref("Card"), {"properties": {"character_data": False, **LIVE2D}}]},
    ], "description": "A card (V1, V2 or V3) or `{character_data: card}`, with the legacy "
                      "`live2d_model_id` / `live2d_model_path`."}
    whole = {"allOf": [ref("Card"), {"required": ["spec"]}]}  # a card with `spec` replaces
    named["CardUpdate"] = {"anyOf": [
        {"type": "object", "required": ["character_data"],
         "properties": {"character_data": {"anyOf": [ref("CardPatch"), whole]}, **LIVE2D},
         "additionalProperties": False},
        {"allOf": [whole, {"properties": {"character_data": False, **LIVE2D}}]},
        {"type": "object", "minProperties": 1, "properties": {
            **named["CardPatch"]["properties"], **LIVE2D}, "additionalProperties": False},
    ], "description": "Changed card fields (see `CardPatch`), a whole card (it has `spec`), "
                      "`{character_data: ...}` holding either, and/or the legacy live2d keys."}
    return named
