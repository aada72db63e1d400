"""The built-in prompt builders, in SillyTavern's chat-completion order by default.

``system_prompt`` -> (lore before) ``character_definition`` (lore after) ->
``example_dialogue`` -> ``history`` (with depth injections) ->
``post_history_instructions``. ``first_message`` opens a new conversation with
the card's greeting. Each appends ``{role, content}`` messages to
``turn.messages``; empty parts add nothing. See ``docs/prompt.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import Field

from companion_engine import hookimpl
from companion_engine.cards.macros import with_original
from companion_engine.errors import ApiError
from companion_engine.prompting import expand
from companion_engine.stages import PromptBuilder, StageOptions
from companion_engine.tokens import get_counter
from companion_engine.turn import HistoryInfo, Message, Role, Turn

#: SillyTavern's default main prompt (chat completion).
DEFAULT_SYSTEM_PROMPT = ("Write {{char}}'s next reply in a fictional chat between {{char}} "
                         "and {{user}}.")
_START = re.compile(r"<START>", re.IGNORECASE)


def _system(turn: Turn, text: str) -> Message | None:
    if not text.strip():
        return None
    message: Message = {"role": "system", "content": text.strip()}
    turn.messages.append(message)
    return message


class SystemPrompt(PromptBuilder):
    """The main system prompt; the card's ``system_prompt`` replaces it (``{{original}}``)."""

    name: ClassVar[str] = "system_prompt"
    description: ClassVar[str] = "system prompt, replaced by the card's system_prompt"

    class Options(StageOptions):
        text: str = DEFAULT_SYSTEM_PROMPT
        #: Let the card's ``system_prompt`` replace ``text`` (the V2 spec's default).
        prefer_character: bool = True

    async def build(self, turn: Turn) -> None:
        o = self.options
        assert isinstance(o, SystemPrompt.Options)
        text = o.text
        if o.prefer_character and turn.character is not None:
            text = with_original(turn.character.system_prompt, text)
        turn.main_prompt = _system(turn, expand(turn, text))


class CharacterDefinition(PromptBuilder):
    """Lore before, description, personality, scenario, lore after: one system message each."""

    name: ClassVar[str] = "character_definition"
    description: ClassVar[str] = "character description, personality and scenario with lore"

    class Options(StageOptions):
        personality_format: str = "[{{char}}'s personality: {{personality}}]"
        scenario_format: str = "[Circumstances and context of the dialogue: {{scenario}}]"

    async def build(self, turn: Turn) -> None:
        o = self.options
        assert isinstance(o, CharacterDefinition.Options)
        _system(turn, "\n".join(turn.slots.get("before_char", [])))
        card = turn.character
        if card is not None:
            _system(turn, expand(turn, card.description))
            if card.personality.strip():
                _system(turn, expand(turn, o.personality_format.replace(
                    "{{personality}}", card.personality.strip())))
            if card.scenario.strip():
                _system(turn, expand(turn, o.scenario_format.replace(
                    "{{scenario}}", card.scenario.strip())))
        _system(turn, "\n".join(turn.slots.get("after_char", [])))


def _blocks(text: str) -> list[str]:
    """``<START>``-separated blocks of an example text (case-insensitive), trimmed."""
    return [b.strip() for b in _START.split(text) if b.strip()]


def example_blocks(turn: Turn) -> list[str]:
    """The card's ``mes_example`` split on ``<START>``, with the lorebook's example entries.

    As SillyTavern builds them: each ``before_examples`` entry goes in front of what is
    there (so they end up in descending ``order``), each ``after_examples`` entry at the
    end; an entry holding several ``<START>`` blocks gives several blocks.
    """
    blocks = _blocks(expand(turn, turn.character.mes_example)) \
        if turn.character is not None else []
    for entry in turn.slots.get("before_examples", []):
        blocks[:0] = _blocks(entry)
    for entry in turn.slots.get("after_examples", []):
        blocks.extend(_blocks(entry))
    return blocks


def _example_turns(turn: Turn, block: str) -> list[Message]:
    """``Name: text`` lines of an example block as user/assistant messages."""
    prefixes: list[tuple[str, Role]] = [(f"{turn.user_name}:", "user"),
                                        (f"{turn.char_name}:", "assistant")]
    messages: list[Message] = []
    for line in block.split("\n"):
        for prefix, role in prefixes:
            if line.startswith(prefix):
                messages.append({"role": role, "content": line[len(prefix):].strip()})
                break
        else:
            if messages:
                messages[-1]["content"] += "\n" + line
            elif line.strip():
                messages.append({"role": "system", "content": line})
    return [m for m in messages if m["content"].strip()]


class ExampleDialogue(PromptBuilder):
    """Example dialogues (``mes_example``), each ``<START>`` block under a header."""

    name: ClassVar[str] = "example_dialogue"
    description: ClassVar[str] = "the card's example dialogues, split on <START>"

    class Options(StageOptions):
        #: ``text``: one system message per block. ``turns``: the header as a system
        #: message, then the block's lines as user/assistant messages.
        format: Literal["text", "turns"] = "text"
        header: str = "[Example Chat]"
        #: Always include the examples (SillyTavern's "pin examples"); otherwise, when
        #: the history needs room, the examples give it up first.
        keep: bool = False

    async def build(self, turn: Turn) -> None:
        o = self.options
        assert isinstance(o, ExampleDialogue.Options)
        for block in example_blocks(turn):
            placed: list[Message] = []
            if o.format == "text":
                message = _system(turn, f"{o.header}\n{block}" if o.header else block)
                placed = [message] if message is not None else []
            else:
                header = _system(turn, o.header)
                lines = _example_turns(turn, block)
                turn.messages.extend(lines)
                placed = [*([header] if header is not None else []), *lines]
            if placed and not o.keep:
                turn.examples.append(placed)


class FirstMessage(PromptBuilder):
    """A new conversation opens with the card's greeting (``first_mes`` or an alternate).

    Only records ``turn.greeting`` (the chat runner stores it); ``history`` places
    it as the first assistant message. Placed after ``history``, it inserts it
    before the user's message itself.
    """

    name: ClassVar[str] = "first_message"
    description: ClassVar[str] = "open a new conversation with the card's greeting"

    async def build(self, turn: Turn) -> None:
        card = turn.character
        if card is None or turn.history or turn.greeting is not None:
            return
        index = turn.greeting_index
        if index == 0:
            text = card.first_mes
        elif index <= len(card.alternate_greetings):
            text = card.alternate_greetings[index - 1]
        else:
            raise ApiError(409, f"greeting {index} does not exist: {card.name} has "
                                f"{len(card.alternate_greetings)} alternate greeting(s)",
                           {"loc": "greeting", "max": len(card.alternate_greetings)})
        text = expand(turn, text).strip()
        if not text:
            return
        turn.greeting = text
        at = turn.user_index
        if at is not None:  # history already ran: insert before the user's message
            turn.messages.insert(at, {"role": "assistant", "content": text})


class History(PromptBuilder):
    """The conversation, newest messages kept within ``max_tokens``, then the user's message.

    The user's message is always included, even when it alone exceeds the budget.
    Lorebook depth injections are inserted here: depth 0 after the last message,
    depth N before the N-th message from the end.
    """

    name: ClassVar[str] = "history"
    description: ClassVar[str] = "chat history within a token budget, with depth injections"

    class Options(StageOptions):
        max_tokens: int = Field(default=3000, ge=1, le=10_000_000)

    async def build(self, turn: Turn) -> None:
        o = self.options
        assert isinstance(o, History.Options)
        counter = await get_counter(turn.model or turn.profile.llm.model)
        earlier: list[Message] = list(turn.history)
        if not earlier and turn.greeting:
            earlier = [{"role": "assistant", "content": turn.greeting}]
        user = turn.user_entry
        used = counter.count_message(user["content"])
        kept: list[Message] = []
        for message in reversed(earlier):
            cost = counter.count_message(message["content"])
            if used + cost > o.max_tokens:
                break
            used += cost
            kept.append(message)
        kept.reverse()
        chat = [*kept, user]
        turn.messages.extend(with_injections(chat, turn.depth_injections))
        examples_dropped = fit_examples(turn, o.max_tokens - used, counter.count_message)
        turn.history_info = HistoryInfo(kept=len(kept), dropped=len(earlier) - len(kept),
                                        tokens=used, max_tokens=o.max_tokens, chat=chat,
                                        examples_dropped=examples_dropped)


def fit_examples(turn: Turn, room: int, cost: Callable[[str], int]) -> int:
    """Keep the example dialogue within what the history left of its budget; return how
    many example messages were dropped.

    SillyTavern's order: the chat is filled first, then the examples, block by block,
    each message while it still fits (a block stops at its first one that does not; a
    block left with only its header is dropped whole).
    """
    if not turn.examples:
        return 0
    drop: set[int] = set()
    for block in turn.examples:
        added = 0
        for i, message in enumerate(block):
            c = cost(message["content"])
            if c > room:
                drop.update(id(m) for m in block[i:])
                break
            room -= c
            added += 1
        header_only = len(block) > 1 and added == 1 and block[0]["role"] == "system"
        if header_only:
            drop.add(id(block[0]))
            room += cost(block[0]["content"])
    if drop:
        turn.messages[:] = [m for m in turn.messages if id(m) not in drop]
    return len(drop)


def with_injections(chat: list[Message], injections: list[tuple[int, Role, str]]) -> list[Message]:
    """``chat`` with each (depth, role, text) inserted ``depth`` messages from the end.

    SillyTavern's ``populationInjectionPrompts``: injections of the same depth and role
    become one message (texts trimmed, joined by newlines, in list order); at one
    depth the assistant message comes first, then user, then system (closest to
    what follows); an injection deeper than the chat goes before its first message,
    the deepest first.
    """
    if not injections:
        return chat
    by_depth: dict[int, dict[str, list[str]]] = {}
    for depth, role, text in injections:
        if text.strip():
            by_depth.setdefault(max(0, depth), {}).setdefault(role, []).append(text.strip())
    newest_first: list[Message] = list(reversed(chat))
    inserted = 0
    for depth in sorted(by_depth):
        roles = by_depth[depth]
        group: list[Message] = [{"role": role, "content": "\n".join(roles[role])}  # type: ignore[typeddict-item]
                                for role in ("system", "user", "assistant") if role in roles]
        at = depth + inserted
        newest_first[at:at] = group
        inserted += len(group)
    newest_first.reverse()
    return newest_first


class PostHistoryInstructions(PromptBuilder):
    """Instructions after the history; the card's field replaces ``text`` (``{{original}}``)."""

    name: ClassVar[str] = "post_history_instructions"
    description: ClassVar[str] = "post-history instructions (the card's, or the profile's)"

    class Options(StageOptions):
        text: str = ""
        prefer_character: bool = True
        role: Literal["system", "user"] = "system"

    async def build(self, turn: Turn) -> None:
        o = self.options
        assert isinstance(o, PostHistoryInstructions.Options)
        text = o.text
        if o.prefer_character and turn.character is not None:
            text = with_original(turn.character.post_history_instructions, text)
        text = expand(turn, text).strip()
        if text:
            turn.messages.append({"role": o.role, "content": text})


class SquashSystem(PromptBuilder):
    """Merge consecutive system messages into one (for chat templates that allow only one)."""

    name: ClassVar[str] = "squash_system"
    description: ClassVar[str] = "merge consecutive system messages"

    class Options(StageOptions):
        separator: str = "\n\n"

    async def build(self, turn: Turn) -> None:
        o = self.options
        assert isinstance(o, SquashSystem.Options)
        out: list[Message] = []
        for message in turn.messages:
            if out and message["role"] == "system" and out[-1]["role"] == "system":
                out[-1] = {"role": "system",
                           "content": out[-1]["content"] + o.separator + message["content"]}
            else:
                out.append(message)  # the same object: turn.user_entry stays anchored
        turn.messages[:] = out


@hookimpl
def register_prompt_builders() -> list[type[PromptBuilder]]:
    return [SystemPrompt, CharacterDefinition, ExampleDialogue, FirstMessage, History,
            PostHistoryInstructions, SquashSystem]
