"""Turning display sentences into speech text: the rules behind the speech cleaners.

Each function or filter takes one sentence and returns what should be said.
The filters keep state across sentences of one reply (inside a code block,
inside an unfinished ``*action*``), so one instance serves one turn.
"""

from __future__ import annotations

import re
from collections.abc import Collection

# --- expressions ------------------------------------------------------------------------------

#: ``[joy]``, ``[Happy]``, ``[big smile]``: a short bracketed tag that is not a markdown link.
EXPRESSION_TAG = re.compile(r"\[\s*([A-Za-z][A-Za-z0-9 _-]{0,31}?)\s*\](?![(\[])")


def extract_expressions(text: str, names: Collection[str] = (),
                        strip_unknown: bool = True) -> tuple[str, list[str]]:
    """Remove expression tags from ``text``; return the rest and the tags, lowercased.

    With ``names``, only those tags are reported; other bracket tags are still
    removed from speech when ``strip_unknown`` (an LLM inventing ``[inquisitive]``
    should not be read aloud), and kept otherwise.
    """
    wanted = {n.lower() for n in names}
    found: list[str] = []

    def repl(m: re.Match[str]) -> str:
        tag = m.group(1).lower()
        if not wanted or tag in wanted:
            found.append(tag)
            return " "
        return " " if strip_unknown else m.group(0)

    return EXPRESSION_TAG.sub(repl, text), found


# --- roleplay actions -------------------------------------------------------------------------

_STARS = re.compile(r"\*+")


class ActionFilter:
    """Drops ``*waves*`` roleplay actions, even across sentences; ``**bold**`` stays.

    A single ``*`` opens an action when it follows a space (or starts the text)
    and touches a word; it closes at the next single ``*`` that follows a
    non-space. ``2*3*4`` and ``**bold**`` are left alone.
    """

    def __init__(self, keep_text: bool = False) -> None:
        self.keep_text = keep_text
        self.in_action = False

    def __call__(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        drop_from = 0 if self.in_action else -1
        for m in _STARS.finditer(text):
            if len(m.group()) != 1:
                continue
            i = m.start()
            before = text[i - 1] if i > 0 else " "
            after = text[i + 1] if i + 1 < len(text) else " "
            if not self.in_action:
                if (before.isspace() or before in "([\"'“‘") and not after.isspace():
                    out.append(text[pos:i])
                    self.in_action = True
                    drop_from = i
            elif not before.isspace() and not after.isalnum():
                inner = text[drop_from:i].lstrip("*")
                out.append(f" {inner} " if self.keep_text else " ")
                self.in_action = False
                pos = i + 1
        if self.in_action:
            if self.keep_text:
                out.append(text[drop_from:].lstrip("*"))
            return "".join(out)
        out.append(text[pos:])
        return "".join(out)


# --- markdown ---------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+")
_QUOTE = re.compile(r"^\s{0,3}(?:>\s?)+")
_LIST = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_RULE = re.compile(r"^\s*([-*_])(?:\s*\1){2,}\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\((?:[^()]|\([^()]*\))*\)")
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<(?:https?://|mailto:)[^>\s]+>")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'\"]")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_STRIKE = re.compile(r"~~.+?~~")
_STRONG = re.compile(r"(\*\*\*|\*\*|___|__)(?=\S)(.+?)(?<=\S)\1")
_EM_STAR = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])")
_EM_UNDER = re.compile(r"(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_STRAY = re.compile(r"\*{2,}|_{2,}|`+|(?<!\S)\*|\*(?!\S)|~~")


class MarkdownFilter:
    """Markdown to plain speech: emphasis kept as words, code blocks dropped, links to labels.

    Fenced code blocks are dropped whole, also when they span several
    sentences; ``code_placeholder`` may say something instead (once per block).
    """

    def __init__(self, code_placeholder: str = "") -> None:
        self.code_placeholder = code_placeholder
        self.in_fence = False

    def __call__(self, text: str) -> str:
        lines = []
        for line in text.split("\n"):
            if _FENCE.match(line):
                if not self.in_fence and self.code_placeholder:
                    lines.append(self.code_placeholder)
                self.in_fence = not self.in_fence
                continue
            if self.in_fence:
                continue
            lines.append(clean_markdown_line(line))
        return "\n".join(line for line in lines if line.strip())


def clean_markdown_line(line: str) -> str:
    """One line of markdown as it should sound."""
    if _RULE.match(line) or _TABLE_RULE.match(line):
        return ""
    line = _HEADING.sub("", line)
    line = _QUOTE.sub("", line)
    line = _LIST.sub("", line)
    line = _IMAGE.sub(r"\1", line)
    line = _LINK.sub(r"\1", line)
    line = _REF_LINK.sub(r"\1", line)
    line = _AUTOLINK.sub("", line)
    line = _URL.sub("", line)
    line = _INLINE_CODE.sub(r"\2", line)
    line = _STRIKE.sub("", line)
    for _ in range(2):  # ***both*** and nested **_mixed_** emphasis
        line = _STRONG.sub(r"\2", line)
        line = _EM_STAR.sub(r"\1", line)
        line = _EM_UNDER.sub(r"\1", line)
    line = _HTML_TAG.sub("", line)
    line = _STRAY.sub("", line)
    if "|" in line:
        line = ", ".join(c.strip() for c in line.strip().strip("|").split("|") if c.strip())
    return line
