"""From a chat request to a ``Turn``: character, history, user name and model.

Nothing here has side effects: naming a character in a request does not make it
the active one, and a conversation is only written once the turn runs.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from companion_engine.cards.macros import substitute
from companion_engine.errors import ApiError
from companion_engine.llm import ModelError, validate_model
from companion_engine.store import StoredMessage, Swipe
from companion_engine.turn import Message, Turn

if TYPE_CHECKING:
    from companion_engine.cards.model import Character
    from companion_engine.chat.request import ChatRequest
    from companion_engine.engine import Engine
    from companion_engine.pipeline import Pipeline
    from companion_engine.store import Conversation


def new_conversation_id() -> str:
    return uuid.uuid4().hex


def greetings(character: Character, user_name: str, *, group: bool = False) -> list[str]:
    """A card's greetings as they open a conversation: ``first_mes``, then the
    ``alternate_greetings`` (and, in a group chat, the V3 ``group_only_greetings``),
    macros expanded. Empty ones stay in place so indices match the card's."""
    texts = [character.first_mes, *character.alternate_greetings]
    if group:
        texts += character.group_only_greetings
    return [substitute(t.replace("\r\n", "\n"), character.display_name, user_name).strip()
            for t in texts]


def greeting_message(character: Character, user_name: str, index: int = 0, *,
                     group: bool = False, chosen: str | None = None) -> StoredMessage | None:
    """The stored greeting of a new conversation: greeting ``index`` chosen, the card's other
    greetings kept as its swipes (SillyTavern shows alternate greetings as swipes of the
    first message). ``chosen`` is the text the prompt used, when a stage built it. None
    when the card has no such greeting text."""
    texts = greetings(character, user_name, group=group)
    if not 0 <= index < len(texts):
        raise ApiError(422, f"greeting {index} does not exist: {character.name} has "
                            f"{len(texts) - 1} alternate greeting(s)",
                       {"loc": "greeting", "max": len(texts) - 1})
    if chosen is not None:
        texts[index] = chosen
    if not texts[index]:
        return None
    now = time.time()
    meta = {"greeting": True, "character_id": character.id}
    kept = [(i, t) for i, t in enumerate(texts) if t]
    swipes = [Swipe(t, created_at=now, meta={**meta, "greeting_index": i}) for i, t in kept]
    at = [i for i, _ in kept].index(index)
    message = StoredMessage("assistant", texts[index], created_at=now)
    return message.choose(swipes, at) if len(swipes) > 1 else StoredMessage(
        "assistant", texts[index], created_at=now, meta=swipes[0].meta)


def stored_history(conversation: Conversation | None) -> list[Message]:
    """A stored conversation as prompt history (failed replies left out)."""
    if conversation is None:
        return []
    return [{"role": m.role, "content": m.content} for m in conversation.messages  # type: ignore[typeddict-item]
            if m.status != "error" and m.content and m.role in ("user", "assistant", "system")]


async def make_turn(engine: Engine, pipeline: Pipeline, req: ChatRequest) -> Turn:
    """Resolve what a request means; 404 for an unknown character, 400 for a bad model."""
    conversation = None
    if req.message is not None and req.conversation_id is not None:
        conversation = await engine.store.get_conversation(req.conversation_id)
    character = resolve_character(engine, req.character_id,
                                  conversation.character_id if conversation else None)
    if req.messages is not None:
        history: list[Message] = [{"role": m.role, "content": m.content}
                                  for m in req.messages[:-1] if m.content.strip()]
        conversation_id = req.conversation_id
    else:
        history = stored_history(conversation)
        conversation_id = req.conversation_id or new_conversation_id()
    model = engine.active_model
    if req.model is not None:
        try:
            model = await validate_model(req.model)
        except ModelError as exc:
            raise ApiError(400, str(exc)) from None
    turn = Turn(
        profile=pipeline.profile,
        user_message=req.user_message,
        character=character,
        user_name=req.user_name or pipeline.profile.user_name,
        history=history,
        conversation_id=conversation_id,
        model=model,
        engine=engine,
        greeting_index=req.greeting or 0,
        voice=req.voice,
        audio_format=req.audio_format,
        chunked_audio=req.chunked_audio,
    )
    if conversation is not None:  # for {{idle_duration}}
        turn.last_user_at = next((m.created_at for m in reversed(conversation.messages)
                                  if m.role == "user"), None)
    return turn


def resolve_character(engine: Engine, requested: str | None,
                      conversation_character: str | None) -> Character | None:
    """The requested card, else the conversation's, else the active one."""
    if requested is not None:
        character = engine.characters.get(requested)
        if character is None:
            raise ApiError(404, f"character not found: {requested}")
        return character
    if conversation_character is not None:
        character = engine.characters.get(conversation_character)
        if character is not None:
            return character
    return engine.characters.active()
