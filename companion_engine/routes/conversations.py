"""Stored conversations (server-managed history): read and delete."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from companion_engine import hookimpl
from companion_engine.engine import Engine
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, json_response
from companion_engine.patterns import CONVERSATION_ID
from companion_engine.store import Conversation

routes = ApiRoutes()


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


class Deleted(BaseModel):
    success: bool
    message: str


def _conversation_id(request: web.Request) -> str:
    conversation_id = request.match_info["id"]
    if not CONVERSATION_ID.match(conversation_id):
        raise ApiError(400, "invalid conversation id: 1-128 letters, digits, '_', '-', '.', ':'")
    return conversation_id


@routes.get("/api/conversations/{id}", response=ConversationReply, tags=["conversations"],
            summary="A stored conversation and its messages", errors=(400, 404))
async def get_conversation(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id = _conversation_id(request)
    conversation = await engine.store.get_conversation(conversation_id)
    if conversation is None:
        raise ApiError(404, f"conversation not found: {conversation_id}")
    state = await engine.store.get_state(conversation_id)
    return json_response({"success": True, "data": conversation_data(conversation, state)})


def conversation_data(conversation: Conversation, state: dict[str, Any]) -> dict[str, Any]:
    """A conversation as the API shows it (``ConversationData``)."""
    c = conversation
    return {
        "id": c.id, "character_id": c.character_id, "character_ids": c.character_ids,
        "reply_order": c.reply_order, "title": c.title, "created_at": c.created_at,
        "updated_at": c.updated_at, "version": c.version, "branched_from": c.branched_from,
        "messages": [{"index": i, **m.as_dict()} for i, m in enumerate(c.messages)],
        "summary": state.get("summary"), "authors_note": state.get("authors_note"),
    }


@routes.delete("/api/conversations/{id}", response=Deleted, tags=["conversations"],
               summary="Delete a stored conversation", errors=(400, 404))
async def delete_conversation(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    conversation_id = _conversation_id(request)
    if not await engine.store.delete_conversation(conversation_id):
        raise ApiError(404, f"conversation not found: {conversation_id}")
    return json_response({"success": True, "message": f"conversation {conversation_id} deleted"})


@hookimpl
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    return list(routes)
