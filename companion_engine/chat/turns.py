"""From a request to ``Turn``s: character, history, user name, model, and the kind of turn.

- ``make_turn``: one ``/api/chat`` turn (client-managed history, or a stored
  conversation's next message);
- ``chat_turns``: the same for a stored conversation, group chats included: the
  user's message, then one turn per speaker the group's reply order picks, each
  built once the previous reply is stored;
- ``regenerate_turn``, ``continue_turn``, ``reply_turn``: the editing routes' turns.

The history of a stored conversation leaves failed turns out (issue 19.9): a
reply that failed is never in a prompt, and neither is the user message it
answered once the user moved on (sent another message): a retry is never sent
twice. In a group chat, each speaker's messages carry their ``Name:``.

A turn with no new user message (regenerate, continue, a group member speaking)
takes the conversation's last message as ``turn.user_entry``, whatever its role:
it is the message the history builder places last, where the new one would be.

Nothing here writes: naming a character does not make it the active one, and a
conversation is only written once a turn runs.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from companion_engine.cards.macros import chat_hash, substitute
from companion_engine.chat.kinds import Continue, NewMessage, Regenerate, Reply, TurnKind
from companion_engine.chat.speakers import next_speaker, speakers
from companion_engine.errors import ApiError
from companion_engine.llm import ModelError, validate_model
from companion_engine.turn import Message, Turn

if TYPE_CHECKING:
    from companion_engine.cards.model import Character
    from companion_engine.chat.request import ChatRequest
    from companion_engine.config import ConversationConfig
    from companion_engine.engine import Engine
    from companion_engine.pipeline import Pipeline
    from companion_engine.store import Conversation, StoredMessage

#: Providers whose API continues a trailing assistant message (``continue_prefill: auto``).
PREFILL_PROVIDERS = ("anthropic/",)


def new_conversation_id() -> str:
    return uuid.uuid4().hex


# --- history ------------------------------------------------------------------------------


def prompt_messages(messages: Sequence[StoredMessage], *, new_message: bool
                    ) -> list[StoredMessage]:
    """The stored messages that belong in a prompt: no failed reply, no empty message,
    and no user message whose every reply failed once another user message follows it
    (later in ``messages``, or the turn's own when ``new_message``)."""
    out: list[StoredMessage] = []
    n = len(messages)
    for i, m in enumerate(messages):
        if m.status == "error" or not m.content or m.role not in ("user", "assistant",
                                                                   "system"):
            continue
        if m.role == "user":
            j = i + 1
            replies = []
            while j < n and messages[j].role != "user":
                if messages[j].role == "assistant":
                    replies.append(messages[j])
                j += 1
            moved_on = j < n or new_message
            if replies and moved_on and all(r.status == "error" for r in replies):
                continue  # a failed turn
        out.append(m)
    return out


def speaker_name(message: StoredMessage) -> str | None:
    """The display name a reply (or greeting) was spoken under, from its meta."""
    name = message.meta.get("character")
    return name if isinstance(name, str) and name else None


def as_prompt(messages: Sequence[StoredMessage], *, names: bool) -> list[Message]:
    """Stored messages as prompt messages; ``names``: ``Name: `` before each character's
    (a group chat's history, as SillyTavern sends it)."""
    out: list[Message] = []
    for m in messages:
        content = m.content
        if names and m.role == "assistant":
            name = speaker_name(m)
            if name:
                content = f"{name}: {content}"
        out.append({"role": m.role, "content": content})  # type: ignore[typeddict-item]
    return out


def stored_history(conversation: Conversation | None, *, new_message: bool = True,
                   names: bool | None = None) -> list[Message]:
    """A stored conversation as prompt history (failed turns left out; in a group chat,
    speakers named unless ``names`` is False)."""
    if conversation is None:
        return []
    kept = prompt_messages(conversation.messages, new_message=new_message)
    return as_prompt(kept, names=conversation.is_group if names is None else names)


# --- building turns -----------------------------------------------------------------------


@dataclass(slots=True)
class TurnOptions:
    """What a client may choose for a turn besides its text."""

    model: str | None = None
    user_name: str | None = None
    voice: str | None = None
    audio_format: Any = None
    chunked_audio: bool | None = None

    @classmethod
    def of(cls, req: Any) -> TurnOptions:
        return cls(req.model, req.user_name, req.voice, req.audio_format, req.chunked_audio)


@dataclass(slots=True)
class PlannedTurn:
    """A turn and its kind (None: client-managed history, nothing stored)."""

    turn: Turn
    kind: TurnKind | None


async def _model(engine: Engine, requested: str | None) -> str:
    if requested is None:
        return engine.active_model
    try:
        return await validate_model(requested)
    except ModelError as exc:
        raise ApiError(400, str(exc)) from None


async def _turn(engine: Engine, pipeline: Pipeline, *, user_message: str,
                character: Character | None, history: list[Message],
                conversation_id: str | None, conversation: Conversation | None,
                options: TurnOptions, greeting_index: int = 0) -> Turn:
    turn = Turn(
        profile=pipeline.profile,
        user_message=user_message,
        character=character,
        user_name=options.user_name or pipeline.profile.user_name,
        history=history,
        conversation_id=conversation_id,
        model=await _model(engine, options.model),
        engine=engine,
        greeting_index=greeting_index,
        voice=options.voice,
        audio_format=options.audio_format,
        chunked_audio=options.chunked_audio,
    )
    if conversation is not None:  # for {{idle_duration}}, and {{pick}} in a branch
        turn.last_user_at = next((m.created_at for m in reversed(conversation.messages)
                                  if m.role == "user"), None)
        origin = (conversation.branched_from or {}).get("conversation_id")
        if isinstance(origin, str):
            turn.chat_id_hash = chat_hash(origin)
    return turn


async def make_turn(engine: Engine, pipeline: Pipeline, req: ChatRequest) -> Turn:
    """The first (or only) turn of a chat request; 404 for an unknown character, 400 for
    a bad model. ``chat_turns`` runs a group chat's further speakers."""
    planned = await first_chat_turn(engine, pipeline, req)
    return planned.turn


async def _read(engine: Engine, req: ChatRequest) -> Conversation | None:
    if req.message is None or req.conversation_id is None:
        return None
    return await engine.store.get_conversation(req.conversation_id)


async def first_chat_turn(engine: Engine, pipeline: Pipeline, req: ChatRequest,
                          conversation: Conversation | None = None, *,
                          read: bool = True) -> PlannedTurn:
    """A chat request's turn: the user's message answered by the requested character, the
    conversation's, or the active one — in a group chat, the first speaker."""
    if read:
        conversation = await _read(engine, req)
    options = TurnOptions.of(req)
    if req.messages is not None:
        character = resolve_character(engine, req.character_id, None)
        history: list[Message] = [{"role": m.role, "content": m.content}
                                  for m in req.messages[:-1] if m.content.strip()]
        turn = await _turn(engine, pipeline, user_message=req.user_message, character=character,
                           history=history, conversation_id=req.conversation_id,
                           conversation=None, options=options,
                           greeting_index=req.greeting or 0)
        return PlannedTurn(turn, None)
    if conversation is not None and conversation.is_group:
        order = group_speakers(engine, pipeline.profile.conversation, conversation,
                               req.message or "", requested=req.character_id)
        if not order:
            raise ApiError(409, f"conversation {conversation.id} replies manually: name the "
                                "speaker with character_id (one of "
                                f"{', '.join(conversation.character_ids)})")
        character: Character | None = order[0]
    else:
        character = resolve_character(engine, req.character_id,
                                      conversation.character_id if conversation else None)
    turn = await _turn(engine, pipeline, user_message=req.user_message, character=character,
                       history=_history(pipeline, conversation, None, new_message=True),
                       conversation_id=req.conversation_id or new_conversation_id(),
                       conversation=conversation, options=options,
                       greeting_index=req.greeting or 0)
    return PlannedTurn(turn, _new_message_kind(pipeline, conversation, turn))


async def chat_turns(engine: Engine, pipeline: Pipeline, req: ChatRequest
                     ) -> AsyncIterator[PlannedTurn]:
    """Every turn a chat request makes, in order; the next is built (from the stored
    conversation) only when asked for, so it sees the replies before it. The first is
    built before anything is sent (its errors are HTTP errors)."""
    conversation = await _read(engine, req)
    first = await first_chat_turn(engine, pipeline, req, conversation, read=False)
    yield first
    if conversation is None or not conversation.is_group or req.character_id is not None:
        return
    order = group_speakers(engine, pipeline.profile.conversation, conversation,
                           req.message or "", requested=None)
    for speaker in order[1:]:
        latest = await engine.store.get_conversation(conversation.id)
        if latest is None or speaker.id not in latest.character_ids:
            return  # deleted, or the member left, meanwhile
        yield await _reply(engine, pipeline, latest, speaker, TurnOptions.of(req))


def _history(pipeline: Pipeline, conversation: Conversation | None,
             messages: Sequence[StoredMessage] | None, *, new_message: bool) -> list[Message]:
    if conversation is None:
        return []
    names = conversation.is_group and pipeline.profile.conversation.group_names
    kept = prompt_messages(conversation.messages if messages is None else messages,
                           new_message=new_message)
    return as_prompt(kept, names=names)


def _new_message_kind(pipeline: Pipeline, conversation: Conversation | None,
                      turn: Turn) -> NewMessage:
    kind = NewMessage()
    _group(kind, pipeline, conversation, turn)
    return kind


def _group(kind: TurnKind, pipeline: Pipeline, conversation: Conversation | None,
           turn: Turn) -> None:
    """A group chat's turn: the speaker's name prefix is stripped, the nudge added."""
    if conversation is None or not conversation.is_group or turn.character is None:
        return
    kind.group = True
    config = pipeline.profile.conversation
    if config.group_names:
        kind.speaker_prefix = f"{turn.character.display_name}:"
    if config.group_nudge.strip():
        kind.nudges.append(substitute(config.group_nudge, turn.char_name, turn.user_name))


def group_speakers(engine: Engine, config: ConversationConfig, conversation: Conversation,
                   text: str, *, requested: str | None,
                   rng: random.Random | None = None) -> list[Character]:
    """Who answers a user's message in a group chat, in order (``requested``: that one)."""
    members = members_of(engine, conversation)
    if requested is not None:
        return [member(members, conversation, requested)]
    return speakers(conversation.reply_order, members, text,
                    last_speaker=last_speaker(conversation), user_input=True,
                    allow_self_responses=config.allow_self_responses, rng=rng)


def members_of(engine: Engine, conversation: Conversation) -> list[Character]:
    """The conversation's characters whose cards exist, in the group's order."""
    out = []
    for cid in conversation.character_ids:
        card = engine.characters.get(cid)
        if card is not None:
            out.append(card)
    return out


def member(members: Sequence[Character], conversation: Conversation,
           character_id: str) -> Character:
    """The member ``character_id`` of the conversation; 409 when it is not one."""
    found = next((m for m in members if m.id == character_id), None)
    if found is None:
        raise ApiError(409, f"character {character_id} is not in conversation "
                            f"{conversation.id} ({', '.join(conversation.character_ids)})")
    return found


def last_speaker(conversation: Conversation) -> str | None:
    """The character id of the last message, when a character spoke it."""
    if not conversation.messages:
        return None
    last = conversation.messages[-1]
    if last.role != "assistant":
        return None
    cid = last.meta.get("character_id")
    return cid if isinstance(cid, str) else conversation.character_id


def _speaker_of(engine: Engine, conversation: Conversation, message: StoredMessage
                ) -> Character | None:
    """The card that spoke ``message`` (a group's member, or the conversation's own)."""
    cid = message.meta.get("character_id")
    if isinstance(cid, str) and cid:
        card = engine.characters.get(cid)
        if card is not None:
            return card
        if conversation.is_group:
            raise ApiError(409, f"the card of {cid}, who spoke that message, is gone")
    return resolve_character(engine, None, conversation.character_id)


async def _answering(engine: Engine, pipeline: Pipeline, conversation: Conversation,
                     upto: int, speaker: Character | None, options: TurnOptions,
                     kind: TurnKind) -> PlannedTurn:
    """A turn answering ``messages[:upto]``, whose last message is its ``user_entry``."""
    history = _history(pipeline, conversation, conversation.messages[:upto],
                       new_message=False)
    if not history:
        raise ApiError(409, f"conversation {conversation.id} has nothing to reply to: "
                            "send a message first")
    last = history.pop()
    turn = await _turn(engine, pipeline, user_message=last["content"], character=speaker,
                       history=history, conversation_id=conversation.id,
                       conversation=conversation, options=options)
    turn.user_entry = last
    turn.greeting = ""  # this turn opens nothing: no stage adds a greeting
    _group(kind, pipeline, conversation, turn)
    return PlannedTurn(turn, kind)


async def _reply(engine: Engine, pipeline: Pipeline, conversation: Conversation,
                 speaker: Character, options: TurnOptions) -> PlannedTurn:
    return await _answering(engine, pipeline, conversation, len(conversation.messages),
                            speaker, options, Reply())


async def regenerate_turn(engine: Engine, pipeline: Pipeline, conversation: Conversation,
                          options: TurnOptions) -> PlannedTurn:
    """A new reply in place of the last one (kept as a swipe). When the conversation
    ends with a user message (its reply failed or was deleted), a reply to it."""
    if not conversation.messages:
        raise ApiError(409, f"conversation {conversation.id} is empty: nothing to regenerate")
    index = len(conversation.messages) - 1
    last = conversation.messages[index]
    if last.role == "user":
        speaker = _speaker_after(engine, conversation)
        return await _answering(engine, pipeline, conversation, index + 1, speaker, options,
                                Reply())
    if last.role != "assistant":
        raise ApiError(409, f"the last message of {conversation.id} is a {last.role} message")
    if last.meta.get("greeting"):
        raise ApiError(409, "the last message is the greeting: choose another of its swipes "
                            "(POST …/messages/{index}/swipe) instead of regenerating it")
    speaker = _speaker_of(engine, conversation, last)
    return await _answering(engine, pipeline, conversation, index, speaker, options,
                            Regenerate(last.id))


def _speaker_after(engine: Engine, conversation: Conversation) -> Character | None:
    """Who answers a conversation ending with a user message: in a group, the speaker
    of the last reply before it (SillyTavern's swipe target), else the conversation's."""
    for m in reversed(conversation.messages):
        if m.role == "assistant" and m.status != "error" and isinstance(
                m.meta.get("character_id"), str):
            card = engine.characters.get(m.meta["character_id"])
            if card is not None and card.id in conversation.character_ids:
                return card
    members = members_of(engine, conversation)
    if conversation.is_group and members:
        return members[0]
    return resolve_character(engine, None, conversation.character_id)


async def continue_turn(engine: Engine, pipeline: Pipeline, conversation: Conversation,
                        options: TurnOptions) -> PlannedTurn:
    """More of the last reply: the LLM gets it as the last assistant message — to extend
    (prefill) or with the continue nudge asking for the rest — and what it writes is
    appended to it."""
    if not conversation.messages or conversation.messages[-1].role != "assistant":
        raise ApiError(409, f"the last message of {conversation.id} is not a reply: nothing "
                            "to continue")
    index = len(conversation.messages) - 1
    last = conversation.messages[index]
    if not last.content:
        raise ApiError(409, "the last reply is empty: regenerate it instead")
    config = pipeline.profile.conversation
    speaker = _speaker_of(engine, conversation, last)
    prefill = config.continue_prefill
    if prefill == "auto":
        prefill = (options.model or engine.active_model).startswith(PREFILL_PROVIDERS)
    joiner = ""
    if not prefill and config.continue_postfix and not last.content[-1].isspace():
        joiner = config.continue_postfix
    kind = Continue(last.id, joiner)
    planned = await _answering(engine, pipeline, conversation, index + 1, speaker, options,
                               kind)
    turn = planned.turn
    kind.prefill = prefill
    if not prefill and config.continue_nudge.strip():
        nudge = config.continue_nudge.replace("{{lastChatMessage}}", last.content.strip())
        kind.nudges.append(substitute(nudge, turn.char_name, turn.user_name))
    return planned


async def reply_turn(engine: Engine, pipeline: Pipeline, conversation: Conversation,
                     character_id: str | None, options: TurnOptions) -> PlannedTurn:
    """One character speaks (``character_id``, else the one the reply order picks)."""
    members = members_of(engine, conversation)
    speaker: Character | None
    if character_id is not None:
        speaker = member(members, conversation, character_id)
    else:
        config = pipeline.profile.conversation
        text = conversation.messages[-1].content if conversation.messages else ""
        speaker = next_speaker(conversation.reply_order, members, text,
                               last_speaker=last_speaker(conversation),
                               allow_self_responses=config.allow_self_responses)
        if speaker is None:
            raise ApiError(409, f"conversation {conversation.id} replies manually: name the "
                                "speaker with ?character_id=")
    return await _reply(engine, pipeline, conversation, speaker, options)


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
