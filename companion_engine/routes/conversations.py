"""Stored conversations (server-managed history): list, create (group chats too), read,
rename, delete, and edit — messages, swipes, branches, the Author's Note override.

Every editing call names the ``version`` it read; a conversation that moved on
answers 409 (``detail`` holds the current version). The routes that generate a
reply (regenerate, continue, a group member's reply) are SSE streams like
``/api/chat/stream``; see ``docs/chat.md`` "Conversations".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from companion_engine import hookimpl
from companion_engine.chat.greetings import greeting_message
from companion_engine.chat.respond import single, stream_turns, wants_speech
from companion_engine.chat.turns import (
    PlannedTurn,
    TurnOptions,
    continue_turn,
    new_conversation_id,
    regenerate_turn,
    reply_turn,
)
from companion_engine.engine import Engine
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.openapi import (
    ApiRoutes,
    json_response,
    not_null,
    parse_model,
    read_body,
)
from companion_engine.patterns import (
    CONVERSATION_ID,
    CharacterId,
    ConversationId,
    ModelName,
    RequestAudioFormat,
    VoiceName,
    ref,
)
from companion_engine.routes.chat import SSE_DOC
from companion_engine.store import (
    Conversation,
    ConversationExists,
    ConversationNotFound,
    ConversationSummary,
    InvalidEdit,
    MessageNotFound,
    ReplyOrder,
    StoredMessage,
    StoreError,
    VersionConflict,
)

#: A message's place in a conversation, as the path says it (digits).
INDEX = {"type": "integer", "minimum": 0, "maximum": 999_999_999}
routes = ApiRoutes(path_params={"id": ref("ConversationId"), "index": INDEX})

MAX_GROUP = 16
MAX_TITLE = 200
MAX_CONTENT_CHARS = 32_000
TAGS = ["conversations"]


# --- models -------------------------------------------------------------------------------


class MessageData(BaseModel):
    index: int
    id: str
    role: str
    content: str
    status: str
    created_at: float
    meta: dict[str, Any] | None = None
    #: Assistant messages: every alternative (regenerated replies, alternate greetings).
    swipes: list[str] | None = None
    swipe_index: int | None = None


class ConversationData(BaseModel):
    id: str
    character_id: str | None
    character_ids: list[str]
    reply_order: str
    title: str | None
    created_at: float
    updated_at: float
    version: int
    branched_from: dict[str, Any] | None = None
    messages: list[MessageData]
    summary: Any = None
    authors_note: Any = None


class ConversationReply(BaseModel):
    success: bool
    data: ConversationData


class ConversationRow(BaseModel):
    id: str
    character_id: str | None
    character_ids: list[str]
    title: str | None
    created_at: float
    updated_at: float
    version: int
    message_count: int
    last_message: MessageData | None


class ConversationList(BaseModel):
    success: bool
    data: list[ConversationRow]
    count: int


class Deleted(BaseModel):
    success: bool
    message: str


class Edited(BaseModel):
    """What an edit left: the new version, and the message it touched (if any)."""

    success: bool
    conversation_id: str
    version: int
    message_count: int
    message: MessageData | None = None


class Branched(BaseModel):
    success: bool
    conversation_id: str
    data: ConversationData


class Body(BaseModel):
    """A JSON body: unknown keys and loose types (``"1"`` for 1, ``true`` for 1) refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """Query parameters: strings parsed into their types; unknown ones refused."""

    model_config = ConfigDict(extra="forbid")


def _check_character_ids(v: list[str] | None) -> list[str] | None:
    if v is not None and len(set(v)) != len(v):
        raise ValueError("a character takes part once")
    return v


#: Characters of a conversation: each once.
UNIQUE = {"uniqueItems": True}


def _members_not_null(schema: dict[str, Any]) -> None:
    not_null(schema)
    schema.update(UNIQUE)


class ListQuery(Query):
    character_id: CharacterId | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


def _group_greeting(schema: dict[str, Any]) -> None:
    """A group opens with each member's first greeting: ``greeting`` is one character's."""
    schema["anyOf"] = [
        {"properties": {"character_ids": {"anyOf": [{"type": "null"}, {"maxItems": 1}]}}},
        {"properties": {"greeting": {"const": 0}}},
    ]


class CreateConversation(Body):
    """A new conversation, opened with each character's greeting. Several
    ``character_ids`` make a group chat (then ``greeting`` is 0 or left out); with both,
    ``character_id`` is one of ``character_ids``."""

    model_config = ConfigDict(json_schema_extra=_group_greeting)

    character_ids: list[CharacterId] | None = Field(default=None, min_length=1,
                                                    max_length=MAX_GROUP,
                                                    json_schema_extra=UNIQUE)
    #: One character (the same as ``character_ids: [id]``); default: the active one.
    character_id: CharacterId | None = None
    reply_order: ReplyOrder = "natural"
    conversation_id: ConversationId | None = None
    title: str | None = Field(default=None, max_length=MAX_TITLE)
    #: Which greeting opens a one-character conversation (0 = ``first_mes``).
    greeting: int = Field(default=0, ge=0, le=1000)
    user_name: str | None = Field(default=None, min_length=1, max_length=100)

    _ids = field_validator("character_ids")(_check_character_ids)


class UpdateConversation(Body):
    version: int = Field(ge=1)
    #: null: no title.
    title: str | None = Field(default=None, max_length=MAX_TITLE)
    #: Left out: unchanged (never null).
    reply_order: ReplyOrder | None = Field(default=None, json_schema_extra=not_null)
    character_ids: list[CharacterId] | None = Field(
        default=None, min_length=1, max_length=MAX_GROUP,
        json_schema_extra=_members_not_null)

    _ids = field_validator("character_ids")(_check_character_ids)


class EditMessage(Body):
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    version: int = Field(ge=1)


class VersionQuery(Query):
    version: int = Field(ge=1)


class ChooseSwipe(Body):
    swipe_index: int = Field(ge=0, le=100_000)
    version: int = Field(ge=1)


class Branch(Body):
    #: The last message the branch keeps (inclusive, like SillyTavern's "branch here").
    at: int = Field(ge=0)
    version: int | None = Field(default=None, ge=1)
    #: The new conversation's id (default: a random one).
    conversation_id: ConversationId | None = None


class TurnRequest(Body):
    """A generated reply's options (all optional; an empty body is fine)."""

    #: The version the client read: 409 before anything runs when it is stale.
    version: int | None = Field(default=None, ge=1)
    model: ModelName | None = None
    user_name: str | None = Field(default=None, min_length=1, max_length=100)
    enable_tts: bool | None = None
    voice: VoiceName | None = None
    audio_format: RequestAudioFormat | None = None
    chunked_audio: bool | None = None


class ReplyQuery(Query):
    character_id: CharacterId | None = None


def _speaker(schema: dict[str, Any]) -> None:
    """``character_id`` names the speaker of an assistant message, so it needs that role."""
    schema["anyOf"] = [
        {"properties": {"character_id": {"type": "null"}}},
        {"required": ["role"], "properties": {"role": {"const": "assistant"}}},
    ]


class AddMessage(Body):
    """A message added without a reply (a user's message in a manual group, an import)."""

    model_config = ConfigDict(json_schema_extra=_speaker)

    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    role: Literal["user", "assistant", "system"] = "user"
    #: The speaker of an assistant message (a member of the conversation).
    character_id: CharacterId | None = None
    user_name: str | None = Field(default=None, min_length=1, max_length=100)
    version: int | None = Field(default=None, ge=1)


class AuthorsNote(Body):
    """This conversation's Author's Note (SillyTavern's defaults)."""

    text: str = Field(max_length=MAX_CONTENT_CHARS)
    #: Messages from the end of the chat history at which the note is inserted.
    depth: int = Field(default=4, ge=0, le=1000)
    #: Insert it every N user turns (1: every turn; 0: never).
    frequency: int = Field(default=1, ge=0, le=1000)
    role: Literal["system", "user", "assistant"] = "system"


class AuthorsNoteReply(BaseModel):
    success: bool
    conversation_id: str
    authors_note: dict[str, Any] | None


# --- helpers ------------------------------------------------------------------------------


def conversation_id_of(request: web.Request) -> str:
    conversation_id = request.match_info["id"]
    if not CONVERSATION_ID.match(conversation_id):
        raise ApiError(400, "invalid conversation id: 1-128 letters, digits, '_', '-', '.', ':'")
    return conversation_id


def message_index_of(request: web.Request) -> int:
    raw = request.match_info["index"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise ApiError(400, f"message index must be a non-negative integer, not {raw[:20]!r}")
    return int(raw)


@contextmanager
def store_errors() -> Iterator[None]:
    """The store's refusals as HTTP errors: 404, 409 (stale, taken, or what the
    conversation's state refuses)."""
    try:
        yield
    except VersionConflict as exc:
        raise ApiError(409, str(exc), {"conversation_id": exc.conversation_id,
                                       "expected": exc.expected, "version": exc.actual}) from None
    except ConversationExists as exc:
        raise ApiError(409, str(exc), {"conversation_id": exc.conversation_id}) from None
    except (ConversationNotFound, MessageNotFound) as exc:
        raise ApiError(404, str(exc)) from None
    except InvalidEdit as exc:  # a valid request the conversation's state refuses
        raise ApiError(409, str(exc)) from None
    except StoreError as exc:  # pragma: no cover - every kind is mapped above
        raise ApiError(400, str(exc)) from None


def message_data(index: int, message: StoredMessage) -> dict[str, Any]:
    return {"index": index, **message.as_dict()}


def conversation_data(conversation: Conversation, state: dict[str, Any]) -> dict[str, Any]:
    """A conversation as the API shows it (``ConversationData``)."""
    c = conversation
    return {
        "id": c.id, "character_id": c.character_id, "character_ids": c.character_ids,
        "reply_order": c.reply_order, "title": c.title, "created_at": c.created_at,
        "updated_at": c.updated_at, "version": c.version, "branched_from": c.branched_from,
        "messages": [message_data(i, m) for i, m in enumerate(c.messages)],
        "summary": state.get("summary"), "authors_note": state.get("authors_note"),
    }


def row_data(row: ConversationSummary) -> dict[str, Any]:
    last = None
    if row.last_message is not None:
        last = message_data(row.message_count - 1, row.last_message)
    return {"id": row.id, "character_id": row.character_id, "character_ids": row.character_ids,
            "title": row.title, "created_at": row.created_at, "updated_at": row.updated_at,
            "version": row.version, "message_count": row.message_count, "last_message": last}


def edited(conversation: Conversation, index: int | None = None) -> web.Response:
    message = None
    if index is not None and index < len(conversation.messages):
        message = message_data(index, conversation.messages[index])
    return json_response({"success": True, "conversation_id": conversation.id,
                          "version": conversation.version,
                          "message_count": len(conversation.messages), "message": message})


async def existing(engine: Engine, conversation_id: str) -> Conversation:
    conversation = await engine.store.get_conversation(conversation_id)
    if conversation is None:
        raise ApiError(404, f"conversation not found: {conversation_id}")
    return conversation


def check_characters(engine: Engine, character_ids: list[str]) -> None:
    missing = [cid for cid in character_ids if engine.characters.get(cid) is None]
    if missing:
        raise ApiError(404, f"character not found: {', '.join(missing)}", {"missing": missing})


# --- reading, creating, deleting ----------------------------------------------------------


@routes.get("/api/conversations", query=ListQuery, response=ConversationList, tags=TAGS,
            summary="Stored conversations, newest first", errors=(422,))
async def list_conversations(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    q = parse_model(ListQuery, dict(request.query), "query")
    rows = await engine.store.list_conversations(character_id=q.character_id, limit=q.limit,
                                                 offset=q.offset)
    return json_response({"success": True, "data": [row_data(r) for r in rows],
                          "count": len(rows)})


@routes.post("/api/conversations", body=CreateConversation, response=ConversationReply,
             tags=TAGS, summary="Start a conversation (several characters: a group chat)",
             errors=(400, 404, 409, 413, 422))
async def create_conversation(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    body = await read_body(request, CreateConversation)
    ids = list(body.character_ids or ([body.character_id] if body.character_id else []))
    if body.character_ids and body.character_id and body.character_id not in ids:
        raise ApiError(422, "character_id must be one of character_ids (or leave it out)")
    if not ids:
        active = engine.characters.active()
        if active is None:
            raise ApiError(409, "no character: send character_ids (no character is active)")
        ids = [active.id]
    check_characters(engine, ids)
    group = len(ids) > 1
    if group and body.greeting:
        raise ApiError(422, "greeting chooses a one-character conversation's greeting; a "
                            "group opens with each member's first greeting (swipe to change)")
    user_name = body.user_name or engine.profile.user_name
    messages = []
    for cid in ids:
        character = engine.characters.get(cid)
        assert character is not None
        greeting = greeting_message(character, user_name, body.greeting, group=group)
        if greeting is not None:
            messages.append(greeting)
    conversation = Conversation(body.conversation_id or new_conversation_id(), ids[0], 0, 0,
                                messages, character_ids=ids, reply_order=body.reply_order,
                                title=body.title)
    with store_errors():
        made = await engine.store.create_conversation(conversation)
    return json_response({"success": True, "data": conversation_data(made, {})})


@routes.get("/api/conversations/{id}", response=ConversationReply, tags=TAGS,
            summary="A stored conversation and its messages", errors=(400, 404))
async def get_conversation(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id = conversation_id_of(request)
    conversation = await existing(engine, conversation_id)
    state = await engine.store.get_state(conversation_id)
    return json_response({"success": True, "data": conversation_data(conversation, state)})


@routes.patch("/api/conversations/{id}", body=UpdateConversation, response=Edited, tags=TAGS,
              summary="Rename a conversation, change its reply order or its characters",
              errors=(400, 404, 409, 413, 422))
async def update_conversation(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id = conversation_id_of(request)
    body = await read_body(request, UpdateConversation)
    head = body.model_dump(exclude_unset=True, exclude={"version"})
    if head.get("character_ids") is not None:
        check_characters(engine, head["character_ids"])
    elif "character_ids" in head or ("reply_order" in head and head["reply_order"] is None):
        raise ApiError(422, "character_ids and reply_order cannot be null")
    with store_errors():
        after = await engine.store.update_conversation(conversation_id,
                                                       expected_version=body.version, **head)
    return edited(after)


@routes.delete("/api/conversations/{id}", response=Deleted, tags=TAGS,
               summary="Delete a stored conversation", errors=(400, 404))
async def delete_conversation(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id = conversation_id_of(request)
    if not await engine.store.delete_conversation(conversation_id):
        raise ApiError(404, f"conversation not found: {conversation_id}")
    return json_response({"success": True, "message": f"conversation {conversation_id} deleted"})


# --- editing ------------------------------------------------------------------------------


@routes.put("/api/conversations/{id}/messages/{index}", body=EditMessage, response=Edited,
            tags=TAGS, summary="Edit a message's text", errors=(400, 404, 409, 413, 422))
async def edit_message(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id, index = conversation_id_of(request), message_index_of(request)
    body = await read_body(request, EditMessage)
    with store_errors():
        after = await engine.store.edit_message(conversation_id, index, body.content,
                                                expected_version=body.version)
    return edited(after, index)


@routes.delete("/api/conversations/{id}/messages/{index}", query=VersionQuery,
               response=Edited, tags=TAGS,
               summary="Delete a message and every message after it",
               errors=(400, 404, 409, 422))
async def delete_messages(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id, index = conversation_id_of(request), message_index_of(request)
    q = parse_model(VersionQuery, dict(request.query), "query")
    with store_errors():
        after = await engine.store.delete_messages(conversation_id, index,
                                                   expected_version=q.version)
    return edited(after)


@routes.post("/api/conversations/{id}/messages/{index}/swipe", body=ChooseSwipe,
             response=Edited, tags=TAGS, summary="Choose one of a reply's alternatives",
             errors=(400, 404, 409, 413, 422))
async def choose_swipe(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id, index = conversation_id_of(request), message_index_of(request)
    body = await read_body(request, ChooseSwipe)
    with store_errors():
        after = await engine.store.choose_swipe(conversation_id, index, body.swipe_index,
                                                expected_version=body.version)
    return edited(after, index)


@routes.post("/api/conversations/{id}/branch", body=Branch, response=Branched, tags=TAGS,
             summary="Copy a conversation up to a message into a new one",
             errors=(400, 404, 409, 413, 422))
async def branch(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id = conversation_id_of(request)
    body = await read_body(request, Branch)
    with store_errors():
        made = await engine.store.branch(conversation_id, body.at, new_id=body.conversation_id,
                                         expected_version=body.version)
    state = await engine.store.get_state(made.id)
    return json_response({"success": True, "conversation_id": made.id,
                          "data": conversation_data(made, state)})


@routes.post("/api/conversations/{id}/messages", body=AddMessage, response=Edited, tags=TAGS,
             summary="Add a message without generating a reply",
             errors=(400, 404, 409, 413, 422))
async def add_message(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id = conversation_id_of(request)
    body = await read_body(request, AddMessage)
    conversation = await existing(engine, conversation_id)
    meta: dict[str, Any] = {"added": True}
    if body.role == "user":
        meta["user_name"] = body.user_name or engine.profile.user_name
    if body.character_id is not None:
        if body.role != "assistant":
            raise ApiError(422, "character_id names the speaker of an assistant message")
        card = engine.characters.get(body.character_id)
        if card is None or body.character_id not in conversation.character_ids:
            raise ApiError(409, f"character {body.character_id} is not in conversation "
                                f"{conversation_id}")
        meta |= {"character_id": card.id, "character": card.display_name}
    message = StoredMessage(body.role, body.content, meta=meta)
    with store_errors():
        after = await engine.store.add_message(conversation_id, message,
                                               expected_version=body.version)
    return edited(after, len(after.messages) - 1)


# --- generated replies (SSE) --------------------------------------------------------------

TURN_ERRORS = (400, 404, 409, 413, 422, 429)
TURN_DOC = "SSE like /api/chat/stream (docs/chat.md)."


async def turn_options(request: web.Request) -> TurnRequest:
    """The optional body of a generating route (no body: the defaults)."""
    if not request.can_read_body:
        return TurnRequest()
    return await read_body(request, TurnRequest)


async def stream_planned(request: web.Request, conversation_id: str, body: TurnRequest,
                         plan: Any) -> web.StreamResponse:
    """Read the conversation, check the version, plan its turn, stream it."""
    engine = request.app[ENGINE]
    async with engine.lease() as pipeline:
        speak = wants_speech(pipeline, body.enable_tts, body.audio_format)
        conversation = await existing(engine, conversation_id)
        if body.version is not None and body.version != conversation.version:
            with store_errors():
                raise VersionConflict(conversation_id, body.version, conversation.version)
        options = TurnOptions(body.model, body.user_name, body.voice, body.audio_format,
                              body.chunked_audio)
        planned: PlannedTurn = await plan(engine, pipeline, conversation, options)
        return await stream_turns(request, engine, pipeline, single(planned), speak=speak)


@routes.post("/api/conversations/{id}/regenerate", body=TurnRequest, body_required=False,
             response_content=SSE_DOC, tags=TAGS, errors=TURN_ERRORS,
             summary="A new last reply; the previous one is kept as a swipe",
             description=TURN_DOC)
async def regenerate(request: web.Request) -> web.StreamResponse:
    conversation_id = conversation_id_of(request)
    body = await turn_options(request)
    return await stream_planned(request, conversation_id, body, regenerate_turn)


@routes.post("/api/conversations/{id}/continue", body=TurnRequest, body_required=False,
             response_content=SSE_DOC, tags=TAGS, errors=TURN_ERRORS,
             summary="More of the last (interrupted) reply, appended to it",
             description=TURN_DOC)
async def continue_reply(request: web.Request) -> web.StreamResponse:
    conversation_id = conversation_id_of(request)
    body = await turn_options(request)
    return await stream_planned(request, conversation_id, body, continue_turn)


@routes.post("/api/conversations/{id}/reply", body=TurnRequest, body_required=False,
             query=ReplyQuery,
             response_content=SSE_DOC, tags=TAGS, errors=TURN_ERRORS,
             summary="One character speaks (a group member: ?character_id=)",
             description=TURN_DOC)
async def reply(request: web.Request) -> web.StreamResponse:
    conversation_id = conversation_id_of(request)
    q = parse_model(ReplyQuery, dict(request.query), "query")
    body = await turn_options(request)

    async def plan(engine: Engine, pipeline: Any, conversation: Conversation,
                   options: TurnOptions) -> PlannedTurn:
        return await reply_turn(engine, pipeline, conversation, q.character_id, options)

    return await stream_planned(request, conversation_id, body, plan)


@routes.put("/api/conversations/{id}/authors_note", body=AuthorsNote,
            response=AuthorsNoteReply, tags=TAGS,
            summary="Set this conversation's Author's Note", errors=(400, 404, 413, 422))
async def set_authors_note(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id = conversation_id_of(request)
    body = await read_body(request, AuthorsNote)
    await existing(engine, conversation_id)
    note = body.model_dump()
    await engine.store.update_state(conversation_id, {"authors_note": note})
    return json_response({"success": True, "conversation_id": conversation_id,
                          "authors_note": note})


@routes.delete("/api/conversations/{id}/authors_note", response=AuthorsNoteReply, tags=TAGS,
               summary="Drop this conversation's Author's Note (the profile's applies)",
               errors=(400, 404))
async def delete_authors_note(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id = conversation_id_of(request)
    await existing(engine, conversation_id)
    await engine.store.update_state(conversation_id, {"authors_note": None})
    return json_response({"success": True, "conversation_id": conversation_id,
                          "authors_note": None})


@hookimpl
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    return list(routes)
