"""Character routes: list, create, upload, read, update, delete, activate, export.

Response shapes keep the original system's names (``characterId``,
``firstMessage``, ``systemPrompt``, ``{success, data}``) and add what it lacked.
Unlike the original, reading a character never changes the active one, ids are
readable slugs, and bad input of any kind is a 4xx that leaves the store as it was.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ConfigDict, Field

from companion_engine import hookimpl
from companion_engine.cards import export
from companion_engine.cards.errors import CardError
from companion_engine.cards.formats import ParsedCard, card_from_object, parse_card
from companion_engine.cards.ids import ID_PATTERN, is_valid_id
from companion_engine.cards.macros import substitute
from companion_engine.cards.model import Character
from companion_engine.cards.schema import card_schemas
from companion_engine.cards.store import CardFile, CharacterStore
from companion_engine.cards.update import apply_patch, combine_patches, merge_patch, replace_card
from companion_engine.engine import Engine
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, add_schemas, json_response, parse_model, read_json
from companion_engine.patterns import ref

#: Largest card file or card body accepted (the original's limit).
MAX_CARD_BYTES = 5 * 1024 * 1024
#: Multipart framing allowed on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
UPLOAD_FIELDS = ("file", "character")
#: A card upload is one file; a few extra form fields are tolerated, thousands are not.
MAX_MULTIPART_PARTS = 16
LIVE2D_KEYS = ("live2d_model_id", "live2d_model_path")
#: Where the legacy ``live2d_*`` keys are kept inside the card's ``extensions``.
EXTENSIONS_KEY = "companion_engine"
TAGS = ["characters"]

routes = ApiRoutes(path_params={"id": ref("CharacterId")})
add_schemas(card_schemas())
#: ``/api/characters/{id}``, where ``upload`` is the upload route, never an id.
CHARACTER = "/api/characters/{id:(?!upload$)[^{}/]+}"
CARD_BODY = {"application/json": {"schema": ref("CardBody")}}
CARD_UPDATE = {"application/json": {"schema": ref("CardUpdate")}}


# --- response models (also the OpenAPI schema) -------------------------------------------------


class Validation(BaseModel):
    valid: bool = True
    warnings: list[str] = Field(default_factory=list)


class CharacterSummary(BaseModel):
    id: str
    characterId: str
    name: str
    #: The first 100 characters, as the original listed it.
    description: str
    tags: list[str]
    creator: str
    #: The file the card lives in: ``json``, ``png`` or ``yaml``.
    sourceFormat: str
    #: The card version it was read as: ``v1``, ``v2``, ``v3`` or ``yaml``.
    cardFormat: str
    active: bool
    created_at: str
    updated_at: str
    #: Where the card's own picture is (``/api/characters/{id}/avatar``), or null when the
    #: card has none (JSON and YAML cards): show initials then.
    avatar: str | None = None


class CharacterDetail(CharacterSummary):
    personality: str
    scenario: str
    firstMessage: str
    alternateGreetings: list[str]
    exampleDialogue: str
    systemPrompt: str
    postHistoryInstructions: str
    creatorNotes: str
    characterVersion: str
    nickname: str | None
    sourceFile: str | None
    lorebookEntries: int
    extensions: dict[str, Any]
    live2d_model_id: str | None = None
    live2d_model_path: str | None = None
    validation: Validation
    #: The whole card as a V2 object (what ``/export?format=json`` returns).
    card: dict[str, Any]


class CharacterCreated(BaseModel):
    characterId: str
    id: str
    name: str
    description: str
    personality: str
    firstMessage: str
    systemPrompt: str
    sourceFormat: str
    cardFormat: str
    validation: Validation


class CharacterListResponse(BaseModel):
    success: bool = True
    data: list[CharacterSummary]


class CharacterResponse(BaseModel):
    success: bool = True
    data: CharacterDetail


class CharacterCreatedResponse(BaseModel):
    success: bool = True
    data: CharacterCreated


class ActivatedCharacter(BaseModel):
    id: str
    name: str
    #: The greeting with ``{{char}}``/``{{user}}`` filled in, ready to show.
    firstMessage: str


class ActivateResponse(BaseModel):
    success: bool = True
    message: str
    character: ActivatedCharacter


class DeleteResponse(BaseModel):
    success: bool = True
    message: str


class Live2DKeys(BaseModel):
    """The legacy ``live2d_*`` keys of a card body (kept in the card's ``extensions``)."""

    model_config = ConfigDict(strict=True)

    live2d_model_id: str | None = None
    live2d_model_path: str | None = None


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: Literal["json", "png"] = "json"


UPLOAD_CONTENT = {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "A JSON or PNG card, at most 5 MB "
                                           "(legacy field name: `character`)"}},
    "required": ["file"],
}}}
EXPORT_CONTENT = {"application/json": {"schema": {"type": "object"}},
                  "image/png": {"schema": {"type": "string", "format": "binary"}}}


# --- shaping responses --------------------------------------------------------------------------


def _iso(seconds: float, fallback: float | None = None) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # a card's creation_date can be anything
        return _iso(fallback) if fallback is not None else ""


def _validation(card: CardFile | ParsedCard) -> Validation:
    return Validation(valid=True, warnings=[str(w) for w in card.warnings])


def _live2d(character: Character) -> dict[str, Any]:
    ours = character.extensions.get(EXTENSIONS_KEY)
    return {k: ours.get(k) for k in LIVE2D_KEYS} if isinstance(ours, dict) else {}


def _summary_fields(card: CardFile, active_id: str | None) -> dict[str, Any]:
    c = card.character
    created = c.creation_date if isinstance(c.creation_date, int) and c.creation_date > 0 \
        else card.mtime
    return {"id": c.id, "characterId": c.id, "name": c.name, "description": c.description,
            "tags": c.tags, "creator": c.creator, "sourceFormat": card.container,
            "cardFormat": c.source_format, "active": c.id == active_id,
            "created_at": _iso(created, card.mtime), "updated_at": _iso(card.mtime),
            "avatar": f"/api/characters/{c.id}/avatar" if card.container == "png" else None}


def summary(card: CardFile, active_id: str | None) -> CharacterSummary:
    fields = _summary_fields(card, active_id)
    fields["description"] = fields["description"][:100]
    return CharacterSummary(**fields)


def detail(card: CardFile, active_id: str | None) -> CharacterDetail:
    c = card.character
    return CharacterDetail(
        **_summary_fields(card, active_id),
        personality=c.personality, scenario=c.scenario, firstMessage=c.first_mes,
        alternateGreetings=c.alternate_greetings, exampleDialogue=c.mes_example,
        systemPrompt=c.system_prompt, postHistoryInstructions=c.post_history_instructions,
        creatorNotes=c.creator_notes, characterVersion=c.character_version,
        nickname=c.nickname, sourceFile=c.source_file,
        lorebookEntries=len(c.character_book.entries) if c.character_book else 0,
        extensions=c.extensions, validation=_validation(card), card=export.v2_card(c),
        **_live2d(c),
    )


def created(card: CardFile) -> dict[str, Any]:
    c = card.character
    data = CharacterCreated(
        characterId=c.id, id=c.id, name=c.name, description=c.description,
        personality=c.personality, firstMessage=c.first_mes, systemPrompt=c.system_prompt,
        sourceFormat=card.container, cardFormat=c.source_format, validation=_validation(card))
    return CharacterCreatedResponse(data=data).model_dump()


# --- request helpers ----------------------------------------------------------------------------


def _store(request: web.Request) -> CharacterStore:
    return request.app[ENGINE].characters


def _card_file(request: web.Request) -> CardFile:
    """The card named in the path, or 400 (malformed id) / 404 (no such character)."""
    character_id = request.match_info["id"]
    if not is_valid_id(character_id):
        shown = character_id if len(character_id) <= 80 else character_id[:80] + "..."
        raise ApiError(400, f"invalid character id {shown!r}: ids match {ID_PATTERN}")
    card = _store(request).file(character_id)
    if card is None:
        raise ApiError(404, f"Character not found: {character_id}")
    return card


def card_error(exc: CardError) -> ApiError:
    return ApiError(exc.status, exc.message, exc.detail)


def _too_large() -> ApiError:
    return ApiError(413, f"File too large: the limit is {MAX_CARD_BYTES // 1024 // 1024} MB "
                         f"({MAX_CARD_BYTES} bytes)")


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The JSON object body (card routes may carry up to the upload cap; the security
    middleware enforces it)."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "expected a JSON object: a card or {\"character_data\": <card>}")
    return body


def _split_body(body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(the card part, the legacy live2d keys) of a create/update body."""
    live2d = {k: body[k] for k in LIVE2D_KEYS if k in body}
    parse_model(Live2DKeys, live2d)  # type-checks the live2d values
    rest = {k: v for k, v in body.items() if k not in LIVE2D_KEYS}
    if "character_data" not in rest:
        return rest, live2d
    extra = sorted(set(rest) - {"character_data"})
    if extra:
        raise ApiError(422, "unexpected key(s) next to character_data: "
                            + ", ".join(map(repr, extra)))
    if not isinstance(rest["character_data"], dict):
        raise ApiError(422, "character_data must be a JSON object (a character card)")
    return rest["character_data"], live2d


def _live2d_patch(live2d: dict[str, Any]) -> dict[str, Any]:
    return {"extensions": {EXTENSIONS_KEY: live2d}} if live2d else {}


async def _read_upload(request: web.Request) -> tuple[bytes, str | None]:
    """The uploaded file's bytes and name, capped at ``MAX_CARD_BYTES`` while reading."""
    if request.content_length is not None and \
            request.content_length > MAX_CARD_BYTES + MULTIPART_OVERHEAD:
        raise _too_large()
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "send the card as multipart/form-data in a field named `file`")
    try:
        reader = await request.multipart()
        count = 0
        async for part in reader:
            count += 1
            if count > MAX_MULTIPART_PARTS:
                raise ApiError(400, f"multipart body has more than {MAX_MULTIPART_PARTS} parts")
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name
            if name is None or not name.isprintable():
                raise ApiError(400, "malformed multipart body: a part without a usable "
                                    "field name")
            if name not in UPLOAD_FIELDS:
                continue
            data = bytearray()
            while chunk := await part.read_chunk(64 * 1024):
                data += chunk
                if len(data) > MAX_CARD_BYTES:
                    raise _too_large()
            if not data:
                raise ApiError(400, "the uploaded file is empty")
            return bytes(data), part.filename
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        reason = " ".join(str(getattr(exc, "message", None) or exc).split())
        raise ApiError(400, f"malformed multipart body: {reason}") from None
    raise ApiError(400, "multipart field `file` is missing (the legacy name `character` "
                        "also works)")


# --- routes -------------------------------------------------------------------------------------


@routes.get("/api/characters", response=CharacterListResponse, tags=TAGS, errors=(),
            summary="List characters (most recently changed first)")
async def list_characters(request: web.Request) -> web.Response:
    store = _store(request)
    active_id = store.active_id
    cards = sorted(store.files(), key=lambda f: (-f.mtime, f.character.id))
    body = CharacterListResponse(data=[summary(f, active_id) for f in cards])
    return json_response(body.model_dump())


@routes.post("/api/characters", body_content=CARD_BODY, response=CharacterCreatedResponse,
             tags=TAGS, summary="Create a character from a card object",
             description="The card is read as a card file is (see `CardBody`): the slips real "
                         "cards carry are accepted with a warning in `validation`.")
async def create_character(request: web.Request) -> web.Response:
    card, live2d = _split_body(await _json_object(request))
    try:
        parsed = await asyncio.to_thread(card_from_object, card)  # up to 5 MB to validate
    except CardError as exc:
        raise card_error(exc) from None
    if live2d:
        parsed.character.extensions = merge_patch(parsed.character.extensions,
                                                  _live2d_patch(live2d)["extensions"])
    return json_response(created(await _store(request).add(parsed)))


@routes.post("/api/characters/upload", response=CharacterCreatedResponse, tags=TAGS,
             body_content=UPLOAD_CONTENT, errors=(400, 415, 422),
             summary="Import a JSON or PNG card file (V1, V2 or V3)")
async def upload_character(request: web.Request) -> web.Response:
    data, filename = await _read_upload(request)
    try:
        parsed = await asyncio.to_thread(parse_card, data)
    except CardError as exc:
        raise card_error(exc) from None
    card = await _store(request).add(parsed, raw=data, name_hint=filename)
    return json_response(created(card))


@routes.get(CHARACTER, response=CharacterResponse, tags=TAGS,
            summary="Read a character (no side effects)")
async def get_character(request: web.Request) -> web.Response:
    card = _card_file(request)
    body = CharacterResponse(data=detail(card, _store(request).active_id))
    return json_response(body.model_dump())


@routes.put(CHARACTER, body_content=CARD_UPDATE, response=CharacterResponse,
            tags=TAGS, summary="Update a character (partial or whole card)")
async def update_character(request: web.Request) -> web.Response:
    card = _card_file(request)
    change, live2d = _split_body(await _json_object(request))
    if not change and not live2d:
        raise ApiError(422, "nothing to update: send card fields, character_data or "
                            "live2d_model_id/live2d_model_path")
    whole = "spec" in change

    def apply(current: Character) -> ParsedCard:
        if whole:
            parsed = replace_card(current, change)
            if not live2d:
                return parsed
            return apply_patch(parsed.character, _live2d_patch(live2d))
        return apply_patch(current, combine_patches(change, _live2d_patch(live2d)))

    store = _store(request)
    try:
        updated = await store.update(card.character.id, apply)
    except CardError as exc:
        raise card_error(exc) from None
    except KeyError:
        raise ApiError(404, f"Character not found: {card.character.id}") from None
    return json_response(CharacterResponse(data=detail(updated, store.active_id)).model_dump())


@routes.delete(CHARACTER, response=DeleteResponse, tags=TAGS,
               summary="Delete a character and its card file")
async def delete_character(request: web.Request) -> web.Response:
    card = _card_file(request)
    if not await _store(request).delete(card.character.id):
        raise ApiError(404, f"Character not found: {card.character.id}")
    return json_response(DeleteResponse(message="Character deleted successfully").model_dump())


@routes.post("/api/characters/{id}/activate", response=ActivateResponse, tags=TAGS,
             summary="Make a character the active one (persists)")
async def activate_character(request: web.Request) -> web.Response:
    card = _card_file(request)
    c = card.character
    engine: Engine = request.app[ENGINE]
    try:
        await engine.characters.set_active(c.id)
    except KeyError:
        raise ApiError(404, f"Character not found: {c.id}") from None
    greeting = substitute(c.first_mes, c.display_name, engine.profile.user_name)
    body = ActivateResponse(message=f"Activated character: {c.name}",
                            character=ActivatedCharacter(id=c.id, name=c.name,
                                                         firstMessage=greeting))
    return json_response(body.model_dump())


@routes.get("/api/characters/{id}/export", query=ExportQuery, response_content=EXPORT_CONTENT,
            tags=TAGS, summary="Download the card as a V2 JSON or PNG file other tools import")
async def export_character(request: web.Request) -> web.Response:
    card = _card_file(request)
    fmt = parse_model(ExportQuery, dict(request.query), "query").format
    try:
        data = await _store(request).export(card.character.id, fmt)
    except KeyError:
        raise ApiError(404, f"Character not found: {card.character.id}") from None
    return web.Response(
        body=data, content_type="image/png" if fmt == "png" else "application/json",
        charset=None if fmt == "png" else "utf-8",
        headers={"Content-Disposition": f'attachment; filename="{card.character.id}.{fmt}"'})


AVATAR_CONTENT = {"image/png": {"schema": {"type": "string", "format": "binary"}}}


@routes.get("/api/characters/{id}/avatar", response_content=AVATAR_CONTENT, tags=TAGS,
            errors=(400, 404), summary="The card's picture (PNG cards), without the card text")
async def character_avatar(request: web.Request) -> web.Response:
    card = _card_file(request)
    # The file's (mtime, size): a browser revalidates and gets 304 until the card changes.
    mtime_ns, size = card.signature
    etag = f'"{mtime_ns:x}-{size:x}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    try:
        image = await _store(request).avatar(card.character.id)
    except KeyError:
        image = None
    if image is None:
        raise ApiError(404, f"character {card.character.id} has no picture",
                       "only PNG cards carry one; show the name's initials instead")
    return web.Response(body=image, content_type="image/png", headers=headers)


@hookimpl
def register_routes(engine: Engine) -> list[web.RouteDef]:
    return list(routes)  # type: ignore[arg-type]
