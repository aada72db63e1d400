"""Card macros: ``{{char}}``/``<BOT>``, ``{{user}}``/``<USER>`` and ``{{original}}``.

Matching is case-insensitive (V1/V2 spec). ``{{original}}`` is one-shot as in
SillyTavern: the first occurrence gets the text the card's field replaces, later
ones become empty. Macros are expanded in card text only, never in LLM output.
"""

from __future__ import annotations

import re

_MACRO = re.compile(r"(\{\{char\}\}|<bot>|<char>)|\{\{user\}\}|<user>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{original\}\}", re.IGNORECASE)


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
