"""``POST /api/prompt/preview``: the prompt a chat turn would send, without calling the LLM.

The turn is built exactly as the chat runner builds it (``make_turn``) and
assembled by the same ``assemble_prompt``; nothing is stored.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from companion_engine import hookimpl
from companion_engine.chat.request import ChatRequest
from companion_engine.errors import ApiError, StageError
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, read_body
from companion_engine.prompting import assemble_prompt
from companion_engine.tokens import get_counter
from companion_engine.turn import LorebookInfo

routes = ApiRoutes()


class PreviewMessage(BaseModel):
    role: str
    content: str
    tokens: int = Field(description="tokens of this message, format overhead included")


class PreviewLore(BaseModel):
    id: int | str | None
    comment: str
    position: str = Field(description="before_char, after_char, at_depth, before_examples, ...")
    order: int
    source: str = Field(description="the lorebook: the character's name or a file's stem")
    depth: int | None = None
    role: str | None = None
    matched: str | None = Field(default=None, description="the key that activated it, or "
                                                          "constant / @@activate")
    tokens: int = 0


class PreviewDroppedLore(BaseModel):
    id: int | str | None
    comment: str
    position: str
    order: int
    source: str = Field(description="the lorebook: the character's name or a file's stem")
    tokens: int | None = Field(default=None, description="tokens it would have taken (null: "
                                                         "not counted, the scan had stopped)")
    reason: Literal["over_budget", "scan_stopped"] = Field(
        description="over_budget: it did not fit in what was left of the budget; "
                    "scan_stopped: it matched but was not tried, since SillyTavern's scan "
                    "stops at the first entry that does not fit")


class PreviewTokens(BaseModel):
    total: int
    tokenizer: str = Field(description="tiktoken:<encoding>, or estimate:chars/4")
    exact: bool
    lore: int = 0
    lore_budget: int | None = None
    lore_overflowed: bool = Field(default=False, description="the lorebook token budget left "
                                                             "entries out (see lore_dropped)")
    history: int | None = None
    history_budget: int | None = None
    history_dropped: int = 0


class PreviewRecollection(BaseModel):
    conversation_id: str
    message_id: str
    role: str
    content: str
    created_at: float
    source: str = Field(description="fts (full-text, BM25) or semantic (embeddings)")
    score: float = Field(description="BM25 (lower is better) or cosine distance")
    tokens: int


class PreviewMemory(BaseModel):
    summary: str | None = Field(default=None, description="the running summary placed")
    summary_covers: int = Field(0, description="oldest history messages the summary covers")
    summary_pending: int = Field(0, description="messages out of the history not summarised "
                                                "yet (updated after the turn)")
    recalled: list[PreviewRecollection] = Field(default_factory=list)
    query: list[str] = Field(default_factory=list, description="the words recall searched for")
    found: int = 0
    skipped_in_prompt: int = Field(0, description="matches left out: the prompt holds them")
    recall_tokens: int = 0
    recall_budget: int = 0
    notes: list[str] = Field(default_factory=list, description="why memory did not add more")


class PromptPreview(BaseModel):
    success: bool = True
    model: str
    character: str | None
    conversation_id: str | None
    greeting: str | None = Field(default=None, description="the greeting that would open a new "
                                                           "conversation")
    messages: list[PreviewMessage]
    lore: list[PreviewLore]
    lore_dropped: list[PreviewDroppedLore] = Field(
        default_factory=list, description="entries that would have fired but the lorebook "
                                          "token_budget left out, in scan order")
    tokens: PreviewTokens
    warnings: list[str] = Field(default_factory=list, description="lorebook problems")
    memory: PreviewMemory | None = Field(default=None, description="what the memory stage "
                                                                   "contributed, and why")


@routes.post("/api/prompt/preview", body=ChatRequest, response=PromptPreview,
             summary="The assembled prompt and activated lorebook entries, without the LLM",
             tags=["prompt"], errors=(404, 409, 500))
async def preview_prompt(request: web.Request) -> web.Response:
    from companion_engine.chat.turns import first_chat_turn  # the chat runner's own builder

    engine = request.app[ENGINE]
    req = await read_body(request, ChatRequest)
    async with engine.lease() as pipeline:
        planned = await first_chat_turn(engine, pipeline, req)
        turn = planned.turn
        try:
            await assemble_prompt(pipeline, turn)
        except StageError as exc:
            raise ApiError(500, str(exc), detail={"type": exc.type, "stage": exc.stage,
                                                  "plugin": exc.plugin}) from None
        if planned.kind is not None:  # a group chat's nudge, as the runner adds it
            planned.kind.arrange(turn)
    counter = await get_counter(turn.model or turn.profile.llm.model)
    messages = [PreviewMessage(role=m["role"], content=m["content"],
                               tokens=counter.count_message(m["content"]))
                for m in turn.messages]
    lore = turn.lorebook_info or LorebookInfo()
    history = turn.history_info
    body = PromptPreview(
        model=turn.model or turn.profile.llm.model,
        character=turn.character.id if turn.character is not None else None,
        conversation_id=turn.conversation_id,
        greeting=turn.greeting,
        messages=messages,
        lore=[PreviewLore(id=x.id, comment=x.comment, position=x.position, order=x.order,
                          source=x.source, depth=x.depth, role=x.role, matched=x.matched,
                          tokens=x.tokens) for x in turn.lore],
        lore_dropped=[PreviewDroppedLore(id=x.id, comment=x.comment, position=x.position,
                                         order=x.order, source=x.source, tokens=x.tokens,
                                         reason=x.reason)  # type: ignore[arg-type]
                      for x in lore.dropped],
        tokens=PreviewTokens(
            total=sum(m.tokens for m in messages), tokenizer=counter.name, exact=counter.exact,
            lore=lore.tokens, lore_budget=lore.token_budget, lore_overflowed=lore.overflowed,
            history=history.tokens if history else None,
            history_budget=history.max_tokens if history else None,
            history_dropped=history.dropped if history else 0),
        warnings=lore.warnings,
        memory=PreviewMemory.model_validate(asdict(turn.memory_info))
        if turn.memory_info is not None else None,
    )
    # Serialised in one step by pydantic (UTF-8, non-ASCII kept as is, as json_response).
    return web.Response(body=body.model_dump_json().encode(), content_type="application/json")


@hookimpl
def register_routes(engine: Any) -> list[web.AbstractRouteDef]:
    return list(routes)
