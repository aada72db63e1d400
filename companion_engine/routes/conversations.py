"""Stored conversations (server-managed history): read and delete."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from companion_engine import hookimpl
from companion_engine.chat.request import CONVERSATION_ID
from companion_engine.engine import Engine
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, json_response

routes = ApiRoutes()


class ConversationData(BaseModel):
    id: str
    character_id: str | None
    created_at: float
    updated_at: float
    messages: list[dict[str, Any]]


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
    return json_response({"success": True, "data": {
        "id": conversation.id, "character_id": conversation.character_id,
        "created_at": conversation.created_at, "updated_at": conversation.updated_at,
        "messages": [m.as_dict() for m in conversation.messages]}})


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
