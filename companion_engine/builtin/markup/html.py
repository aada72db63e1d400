"""The HTML pass of ``sanitize_html``: tags tokenised as a browser does, judged by the policy.

Text passes through verbatim. What this pass writes out is markup a browser and a markdown
renderer read the same way: every ``<`` it lets through as text is followed by a character
that cannot start markup (so no later removal can join it to a tag: ``<<script></script>img``
stays text), and every tag it keeps is on one line, its values free of ``<`` and ``>``, written
as CommonMark reads an HTML tag. A tag that needed no change is passed verbatim; one that lost
an attribute is written again from its parts. Comments are dropped, as are the elements of
``DROP_WITH_CONTENT`` with everything up to their end tag (the browser never sees their start
tag, so it never enters their raw-text state).
"""

from __future__ import annotations

import re

from companion_engine.builtin.markup.policy import (
    DROP_TAG,
    DROP_WITH_CONTENT,
    is_script_url,
    judge_tag,
)
from companion_engine.builtin.markup.tags import (
    CM_TAG_NAME,
    INCOMPLETE,
    NOT_A_TAG,
    Attr,
    Tag,
    scan_tag,
)

#: Longest tag we wait for; a ``<`` with no ``>`` within this is just text.
MAX_TAG = 1024
#: How a ``<`` that starts like markup but is not markup (``<x`` never closed, ``</3``,
#: ``<!x``, ``<?``), or that is followed by another ``<``, goes out: as a browser shows it.
LT = "&lt;"

#: CommonMark autolinks: a markdown renderer makes ``<scheme:...>`` and ``<user@host>`` links.
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\x00-\x20<>]*)>")
EMAIL_AUTOLINK = re.compile(
    r"<[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*>")
_COMMENT_END = re.compile(r"--!?>")
_UNTIDY_VALUE = re.compile(r"[\n\r\f<>\x00]")
_CM_UNQUOTED = re.compile(r"[^ \t\n\r\"'=<>`]+")
_VALUE_ESCAPES = {"<": "&lt;", ">": "&gt;", "\n": "&#10;", "\r": "&#13;", "\f": "&#12;",
                  "\x00": "\ufffd"}
_END_TAGS: dict[str, re.Pattern[str]] = {}


def _is_letter(c: str) -> bool:
    return c.isascii() and c.isalpha()


def _end_tag(name: str) -> re.Pattern[str]:
    """``</name`` as a browser ends an element's raw text: followed by whitespace, / or >."""
    pat = _END_TAGS.get(name)
    if pat is None:
        pat = _END_TAGS[name] = re.compile(rf"</{re.escape(name)}(?=[\t\n\f\r />])",
                                           re.IGNORECASE)
    return pat


def _value_source(a: Attr) -> str:
    """The value written so that it means the same and is tidy."""
    raw = a.raw_value or ""
    if a.quote:
        if not _UNTIDY_VALUE.search(raw):
            return a.quote + raw + a.quote
        return a.quote + _UNTIDY_VALUE.sub(lambda m: _VALUE_ESCAPES[m.group()], raw) + a.quote
    if _CM_UNQUOTED.fullmatch(raw) and "\x00" not in raw:
        return raw
    inner = _UNTIDY_VALUE.sub(lambda m: _VALUE_ESCAPES[m.group()], raw)
    return '"' + inner.replace('"', "&quot;") + '"'


def serialize(tag: Tag, attrs: list[Attr]) -> str:
    """A start tag written again, tidy, with only ``attrs`` (character references kept)."""
    parts = ["<", tag.raw_name]
    for a in attrs:
        parts += (" ", a.raw_name) if a.raw_value is None else (" ", a.raw_name, "=",
                                                                _value_source(a))
    if tag.self_closing:
        parts.append(" />" if attrs else "/>")
    else:
        parts.append(">")
    return "".join(parts)


class HTMLSanitizer:
    """Streams text through, removing active markup and keeping everything else verbatim."""

    def __init__(self, remote_images: bool = True) -> None:
        self.remote_images = remote_images
        self._hold = ""
        #: Inside a dropped element: its name, whose end tag we skip to.
        self._skip: str | None = None
        #: Inside a comment: "start" just after ``<!--`` (``<!-->`` ends it), then "body".
        self._comment: str | None = None
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._hold and self._skip is None and self._comment is None and "<" not in text:
            return text  # the common case: plain text
        hold = self._hold
        if (len(hold) > 2 and hold[1] != "!" and self._skip is None and self._comment is None
                and ">" not in text and "<" not in text and len(hold) + len(text) < MAX_TAG):
            self._hold = hold + text  # a tag still arriving: it cannot end without a ">"
            return ""
        data, self._hold = hold + text, ""
        out: list[str] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._comment is not None:
                pos = self._in_comment(data, pos)
                if pos < 0:
                    break
                continue
            if self._skip is not None:
                pos = self._in_dropped(data, pos)
                if pos < 0:
                    break
                continue
            lt = data.find("<", pos)
            if lt == -1:
                out.append(data[pos:])
                break
            out.append(data[pos:lt])
            if lt + 1 >= n:
                self._hold = "<"  # what follows decides
                break
            c = data[lt + 1]
            if _is_letter(c) or (c == "/" and lt + 2 < n and _is_letter(data[lt + 2])):
                end, tag = scan_tag(data, lt, lt + MAX_TAG)
                if end == INCOMPLETE:
                    self._hold = data[lt:]  # the tag is still arriving
                    break
                if end == NOT_A_TAG or tag is None:
                    out.append(LT)  # see LT: text around a removal must not become a tag
                    pos = lt + 1
                    continue
                out.append(self._tag(tag))
                pos = end
            elif c == "/" and lt + 2 >= n:
                self._hold = data[lt:]
                break
            elif c == "!" and data.startswith("<!--", lt):
                self._comment, pos = "start", lt + 4
            elif c == "!" and lt + 4 > n and "<!--".startswith(data[lt:]):
                self._hold = data[lt:]  # "<!" or "<!-": maybe a comment
                break
            elif c in "!/?<":
                out.append(LT)  # "</3", "<!DOCTYPE", "<?", "<<": markup-like text stays text
                pos = lt + 1
            else:
                out.append("<")  # "a < b", "<3": text
                pos = lt + 1
        return "".join(out)

    def _in_comment(self, data: str, pos: int) -> int:
        """Skip comment text; the position after the comment, or -1 (more is needed)."""
        if self._comment == "start":
            rest = data[pos:pos + 2]
            if rest.startswith(">") or rest == "->":  # "<!-->" and "<!--->" end at once
                self._comment = None
                return pos + len(rest) if rest == "->" else pos + 1
            if rest == "-":
                self._hold = rest  # "<!--" + "-" + ?: the next character decides
                return -1
            if not rest:
                return -1
            self._comment = "body"
        m = _COMMENT_END.search(data, pos)
        if m is None:
            tail = data[max(pos, len(data) - 3):]
            for k in range(len(tail)):
                if "--!>".startswith(tail[k:]) or "-->".startswith(tail[k:]):
                    self._hold = tail[k:]  # maybe the start of "-->"
                    break
            return -1
        self._comment = None
        return m.end()

    def _in_dropped(self, data: str, pos: int) -> int:
        """Skip a dropped element's content; the position after its end tag, or -1."""
        assert self._skip is not None
        m = _end_tag(self._skip).search(data, pos)
        n = len(data)
        if m is None:
            close = "</" + self._skip
            lt = data.rfind("<", max(pos, n - len(close)))
            if lt != -1 and close.startswith(data[lt:].lower()):
                self._hold = data[lt:]  # maybe the start of the end tag
            return -1
        gt = data.find(">", m.end())
        if gt == -1:
            if n - m.start() < MAX_TAG:
                self._hold = data[m.start():]
                return -1
            return m.end()  # an endless end tag: drop it and go on skipping
        self._skip = None
        return gt + 1

    def _tag(self, tag: Tag) -> str:
        """What goes out for one tokenised tag."""
        name = tag.name
        if tag.end:
            if name in DROP_WITH_CONTENT or name in DROP_TAG or not CM_TAG_NAME.fullmatch(
                    tag.raw_name):
                return ""
            return f"</{tag.raw_name}>"
        if not CM_TAG_NAME.fullmatch(tag.raw_name):
            return self._odd_tag(tag)
        if name in DROP_WITH_CONTENT:
            self._skip = name  # even <script/>: the browser ignores "/" on HTML elements
            return ""
        if name in DROP_TAG:
            return ""
        verdict = judge_tag(tag, self.remote_images)
        if verdict.drop_tag:
            return ""
        if verdict.keep is None and tag.tidy:
            return tag.raw
        return serialize(tag, tag.attrs if verdict.keep is None else verdict.keep)

    def _odd_tag(self, tag: Tag) -> str:
        """A tag whose name markdown would not read as one: an autolink, or odd text."""
        raw = tag.raw
        link = AUTOLINK.fullmatch(raw)
        autolink = link is not None or EMAIL_AUTOLINK.fullmatch(raw) is not None
        if link is not None and is_script_url(link.group(1)):
            return ""  # <javascript:...>: a markdown renderer makes a link of it
        verdict = judge_tag(tag, self.remote_images)
        clean = not verdict.drop_tag and verdict.keep is None
        if autolink:
            return raw if clean else ""
        if clean and not any(c in raw for c in "\"'=`\n\r\f"):
            return raw  # <https://e.example/a b> (a markdown destination), <3:>, harmless
        return LT + raw[1:]

    def finish(self) -> str:
        """A dropped element or comment left open is dropped; a held fragment was text."""
        held, self._hold = self._hold, ""
        if self._skip is not None or self._comment is not None:
            return ""
        if held.startswith("<") and len(held) > 1:  # never closed: not a tag, but its text
            return LT + self.feed(held[1:]) + self.finish()  # may hold markup
        return held
