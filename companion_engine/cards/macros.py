"""Card macros, as SillyTavern 1.12 expands them.

``substitute`` handles the V1/V2 spec's ``{{char}}``/``<BOT>`` and
``{{user}}``/``<USER>`` in one pass (lorebook keys, card previews).
``evaluate`` is SillyTavern's ``evaluateMacros``, step for step and in its
order: the legacy ``<USER>`` forms, ``{{roll}}``, ``{{newline}}``/``{{trim}}``/
``{{noop}}``, the card fields and names, ``{{lastMessage}}`` and friends,
``{{reverse:}}``, ``{{// comments}}``, ``{{time}}``/``{{date}}``/``{{weekday}}``/
``{{isotime}}``/``{{isodate}}``/``{{datetimeformat}}``/``{{idle_duration}}``/
``{{time_UTC±N}}``, then ``{{random}}`` and ``{{pick}}``. ``{{pick}}`` is
SillyTavern's stable choice (seeded by the conversation, the text and the
macro's position), so it picks what SillyTavern picks; ``{{random}}`` and
``{{roll}}`` draw from the context's ``rng`` (seeded under a test). Macros are
expanded in prompt text only, never in LLM output. ``{{original}}`` is one-shot
(``with_original``).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from companion_engine.cards.clock import format_moment, humanize
from companion_engine.cards.seeded import SeedRandom, js_number, string_hash, utf16_len

if TYPE_CHECKING:
    from companion_engine.turn import Turn

_MACRO = re.compile(r"(\{\{char\}\}|<bot>|<char>)|\{\{user\}\}|<user>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{original\}\}", re.IGNORECASE)

#: JavaScript's ``String.prototype.trim`` whitespace.
_JS_SPACE = " \t\n\r\v\f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
            "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_COMMA = "##\ufffdCOMMA\ufffd##"
#: More dice than this in one ``{{roll}}`` is treated as an invalid formula.
MAX_DICE = 1000

_I = re.IGNORECASE
_ROLL = re.compile(r"\{\{roll[ :]([^}]+)\}\}", _I)
_DICE = re.compile(r"([1-9][0-9]*)?d([1-9][0-9]*)([+-][0-9]+)?", _I)
_TRIM = re.compile(r"(?:\r?\n)*\{\{trim\}\}(?:\r?\n)*", _I)
_REVERSE = re.compile(r"\{\{reverse:(.+?)\}\}", _I)
_COMMENT = re.compile(r"\{\{//(.*?)\}\}", re.S)
_DATETIMEFORMAT = re.compile(r"\{\{datetimeformat +([^}]*)\}\}", _I)
_TIME_UTC = re.compile(r"\{\{time_UTC([-+][0-9]+)\}\}", _I)
_BANNED = re.compile(r'\{\{banned "(.*)"\}\}', _I)
_RANDOM = re.compile(r"\{\{random\s?::?([^}]+)\}\}", _I)
_PICK = re.compile(r"\{\{pick\s?::?([^}]+)\}\}", _I)
_LEGACY = [(re.compile("<USER>", _I), "user"), (re.compile("<BOT>", _I), "char"),
           (re.compile("<CHAR>", _I), "char"), (re.compile("<CHARIFNOTGROUP>", _I), "group"),
           (re.compile("<GROUP>", _I), "group")]


def substitute(text: str, char: str, user: str) -> str:
    """Replace the character and user macros in ``text`` in one pass.

    One pass means a name that itself looks like a macro is never expanded again.
    """
    if "{" not in text and "<" not in text:
        return text
    return _MACRO.sub(lambda m: char if m.group(1) else user, text)


def with_original(field: str, original: str) -> str:
    """A card ``system_prompt``/``post_history_instructions`` applied over ``original``.

    An empty field means "use the original"; otherwise the field replaces it and
    its first ``{{original}}`` is the original text (later ones are removed).
    """
    if not field.strip():
        return original
    first = True

    def repl(_: re.Match[str]) -> str:
        nonlocal first
        if first:
            first = False
            return original
        return ""

    return _ORIGINAL.sub(repl, field)


@dataclass(slots=True)
class MacroContext:
    """What the macros of one turn expand to."""

    char: str = "Assistant"
    user: str = "User"
    #: The local time ``{{time}}``, ``{{date}}`` and ``{{idle_duration}}`` use.
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now().astimezone())
    #: Draws for ``{{random}}`` and ``{{roll}}``.
    rng: random.Random = field(default_factory=random.Random)
    #: ``{{pick}}``'s seed: SillyTavern's hash of the chat id.
    chat_id_hash: int = 0
    last_message: str = ""
    last_user_message: str = ""
    last_char_message: str = ""
    #: Index of the last message of the chat (``{{lastMessageId}}``); None: empty chat.
    last_message_id: int | None = None
    #: When the user wrote the message before this one (epoch seconds); None: "just now".
    idle_since: float | None = None
    #: ``{{group}}`` / ``{{charIfNotGroup}}``; the character's name outside group chats.
    group: str | None = None
    #: ``{{model}}``: the model the turn runs on.
    model: str = ""
    #: Card fields: ``description``, ``personality``, ``scenario``, ``mesExamples``,
    #: ``charPrompt``, ``charJailbreak``, ``charVersion``, ``persona``.
    fields: dict[str, str] = field(default_factory=dict)


def _js_trim(text: str) -> str:
    return text.strip(_JS_SPACE)


def macro_list(text: str) -> list[str]:
    """The choices of ``{{random}}``/``{{pick}}``: ``a::b`` as is, else ``a, b`` trimmed
    with ``\\,`` for a literal comma."""
    if "::" in text:
        return text.split("::")
    return [_js_trim(item).replace(_COMMA, ",") for item in text.replace("\\,", _COMMA).split(",")]


def roll(formula: str, rng: random.Random) -> str:
    """``{{roll:...}}``: droll's ``NdS±M`` (``20`` means ``1d20``); invalid gives ``""``."""
    formula = _js_trim(formula)
    if formula.isascii() and formula.isdigit():
        formula = "1d" + formula
    m = _DICE.fullmatch(formula)
    if m is None:
        return ""
    dice, sides = int(m.group(1) or 1), int(m.group(2))
    if dice > MAX_DICE:
        return ""
    total = sum(1 + math.floor(rng.random() * sides) for _ in range(dice))
    return str(total + int(m.group(3) or 0))


@functools.lru_cache(maxsize=256)
def _named(name: str) -> re.Pattern[str]:
    return re.compile(r"\{\{" + re.escape(name) + r"\}\}", _I)


def _sub(name: str, text: str, value: str) -> str:
    """``text.replace(/{{name}}/gi, () => value)`` (no backslash escapes in ``value``)."""
    if "{{" not in text:
        return text
    return _named(name).sub(lambda _: value, text)


def _utc_time(now: dt.datetime, offset: str) -> str:
    n = int(offset)
    minutes = n * 60 if abs(n) < 16 else n  # moment's utcOffset: small numbers are hours
    return format_moment(now.astimezone(dt.timezone(dt.timedelta(minutes=minutes))), "LT")


def evaluate(content: str, ctx: MacroContext) -> str:
    """Expand every macro SillyTavern's ``evaluateMacros`` knows (see the module doc)."""
    if not content:
        return ""
    raw = content
    group = ctx.group if ctx.group is not None else ctx.char
    names = {"user": ctx.user, "char": ctx.char, "group": group}
    for pattern, who in _LEGACY:
        if "<" in content:
            content = pattern.sub(lambda _, who=who: names[who], content)
    if "{{" not in content:
        return content
    content = _ROLL.sub(lambda m: roll(m.group(1), ctx.rng), content)
    content = _sub("newline", content, "\n")
    content = _TRIM.sub("", content)
    content = _sub("noop", content, "")
    content = _sub("input", content, "")
    # SillyTavern's order: card fields first, so the names inside them expand too.
    env = {**ctx.fields, "user": ctx.user, "char": ctx.char, "group": group,
           "charIfNotGroup": group, "model": ctx.model}
    for name, value in env.items():
        content = _sub(name, content, value)
    content = _sub("lastMessage", content, ctx.last_message)
    last_id = "" if ctx.last_message_id is None else str(ctx.last_message_id)
    content = _sub("lastMessageId", content, last_id)
    content = _sub("lastUserMessage", content, ctx.last_user_message)
    content = _sub("lastCharMessage", content, ctx.last_char_message)
    content = _REVERSE.sub(lambda m: m.group(1)[::-1], content)
    content = _COMMENT.sub("", content)
    if "{{" not in content:
        return content
    now = ctx.now
    content = _sub("time", content, format_moment(now, "LT"))
    content = _sub("date", content, format_moment(now, "LL"))
    content = _sub("weekday", content, format_moment(now, "dddd"))
    content = _sub("isotime", content, format_moment(now, "HH:mm"))
    content = _sub("isodate", content, format_moment(now, "YYYY-MM-DD"))
    content = _DATETIMEFORMAT.sub(lambda m: format_moment(now, m.group(1)), content)
    idle = "just now" if ctx.idle_since is None else humanize(now.timestamp() - ctx.idle_since)
    content = _sub("idle_duration", content, idle)
    content = _TIME_UTC.sub(lambda m: _utc_time(now, m.group(1)), content)
    content = _BANNED.sub("", content)
    content = _RANDOM.sub(lambda m: _choose(macro_list(m.group(1)), ctx.rng.random()), content)
    if _PICK.search(content):
        content = _pick(content, raw, ctx.chat_id_hash)
    return content


def _choose(items: list[str], x: float) -> str:
    return items[math.floor(x * len(items))]


def _pick(content: str, raw: str, chat_id_hash: int) -> str:
    """SillyTavern's ``pickReplace``: seeded by chat, raw text and the UTF-16 offset."""
    raw_hash = string_hash(raw)
    wide = not content.isascii()

    def repl(m: re.Match[str]) -> str:
        offset = utf16_len(content[:m.start()]) if wide else m.start()
        seed = string_hash(f"{js_number(chat_id_hash)}-{js_number(raw_hash)}-{offset}")
        return _choose(macro_list(m.group(1)), SeedRandom(seed).random())

    return _PICK.sub(repl, content)


def previous_user_time(chat: list[tuple[str, float | None]]) -> float | None:
    """When the user wrote before the newest message: SillyTavern's ``{{idle_duration}}``.

    ``chat`` is ``(role, created_at)`` oldest first; system messages are skipped,
    the newest other message is passed over, and the user message before it counts.
    """
    take = False
    for role, created_at in reversed(chat):
        if role == "system":
            continue
        if role == "user" and take:
            return created_at
        take = True
    return None


def chat_hash(chat_id: str) -> int:
    """``{{pick}}``'s seed for a conversation id (SillyTavern's ``getChatIdHash``)."""
    return string_hash(chat_id)


def macro_context(turn: Turn) -> MacroContext:
    """The macros of ``turn``: its names, clock, chat and (seeded) random numbers."""
    rng = turn.rng
    if rng is None:
        seed = turn.llm_params.get("seed", turn.profile.llm.params.get("seed"))
        rng = turn.rng = (random.Random(f"{seed}\x00{turn.conversation_id}\x00"
                                        f"{len(turn.history)}")
                          if seed is not None else random.Random())
    history = turn.history
    greeting = turn.greeting if turn.greeting and not history else None
    last_char = greeting or ""
    if not last_char:
        for m in reversed(history):
            if m["role"] == "assistant":
                last_char = m["content"]
                break
    card = turn.character
    fields: dict[str, str] = {}
    if card is not None:
        fields.update(charPrompt=card.system_prompt, charJailbreak=card.post_history_instructions,
                      description=card.description, personality=card.personality,
                      scenario=card.scenario, persona="", mesExamples=card.mes_example,
                      charVersion=card.character_version, char_version=card.character_version)
    return MacroContext(
        char=turn.char_name, user=turn.user_name, rng=rng,
        chat_id_hash=turn.chat_id_hash if turn.chat_id_hash is not None
        else chat_hash(turn.conversation_id or ""),
        last_message=turn.user_message, last_user_message=turn.user_message,
        last_char_message=last_char,
        last_message_id=len(history) + (1 if greeting else 0),
        idle_since=turn.last_user_at, model=turn.model or turn.profile.llm.model, fields=fields)
