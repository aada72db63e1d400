"""HTML tags read as the HTML5 tokenizer reads them (WHATWG HTML §13.2.5, "tag open" to "emit").

What a browser does with ``<img/src=x>`` or ``<img src="a"onerror=b>`` is decided here, by
the same states: a tag name runs to whitespace, ``/`` or ``>``; a ``/`` that is not just before
``>`` separates attributes; a value is double- or single-quoted or unquoted (then ``"'=`` and
backticks are part of it); an ``=`` may start an attribute name; a repeated attribute is
ignored; ASCII upper case is lowered. A quote only counts where a value starts.

One deliberate difference: a raw ``<`` in a tag name, attribute name or unquoted value (a
parse error the browser tolerates) makes us say the tag was not one (``NOT_A_TAG``): the
caller then writes that first ``<`` as ``&lt;``, so the browser sees text there too.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

#: HTML whitespace (CR is normalised to LF before tokenising, so it counts too).
WHITESPACE = "\t\n\f\r "
#: The tag is still arriving.
INCOMPLETE = -1
#: Not a tag after all (a raw ``<`` inside it, or longer than the caller's limit).
NOT_A_TAG = -2

_WS = re.compile(r"[\t\n\f\r ]*")
_TAG_NAME = re.compile(r"[^\t\n\f\r />]*")
_ATTR_NAME = re.compile(r"[^\t\n\f\r />=]*")
_UNQUOTED = re.compile(r"[^\t\n\f\r >]*")
#: What CommonMark accepts as an HTML tag (so a markdown renderer passes the tag through whole).
CM_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
CM_ATTR_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_.:-]*")
_CM_UNQUOTED = re.compile(r"[^ \t\n\r\"'=<>`]+")
_UNTIDY_QUOTED = re.compile(r"[\n\r\f<>\x00]")


@dataclass(slots=True)
class Attr:
    """One attribute as the tokenizer produced it."""

    name: str  # ASCII-lower-cased, as the browser stores it
    raw_name: str
    raw_value: str | None  # the value's source text without quotes; None when no ``=value``
    quote: str = ""  # '"', "'" or "" (unquoted or no value)

    @property
    def value(self) -> str:
        """The value with character references resolved (as the browser stores it)."""
        return html.unescape(self.raw_value) if self.raw_value else ""


@dataclass(slots=True)
class Tag:
    raw: str
    name: str  # lower-cased
    raw_name: str
    end: bool  # ``</name ...>``
    attrs: list[Attr] = field(default_factory=list)  # first of each name, in source order
    self_closing: bool = False
    #: Written as CommonMark reads an HTML tag and on one line (spaces between attributes,
    #: no ``<``/``>`` or line break in values, no repeated attribute): passing it verbatim
    #: means the browser and a markdown renderer both see exactly this tag.
    tidy: bool = True


def scan_tag(data: str, start: int, limit: int) -> tuple[int, Tag | None]:
    """Tokenise the tag whose ``<`` is at ``start`` (followed by a letter or ``/`` + letter).

    Returns ``(end, tag)`` with ``end`` just past its ``>``, or ``(INCOMPLETE, None)`` when
    ``data`` stops first, or ``(NOT_A_TAG, None)``. Nothing at or past ``limit`` is read; a
    tag not closed before it is ``NOT_A_TAG`` when ``data`` goes that far.
    """
    n = min(len(data), limit)

    def more() -> tuple[int, None]:
        return (NOT_A_TAG if len(data) >= limit else INCOMPLETE), None

    i = start + 1
    end = data.startswith("/", i)
    if end:
        i += 1
    m = _TAG_NAME.match(data, i, n)
    raw_name, i = m.group(), m.end()
    if "<" in raw_name:
        return NOT_A_TAG, None
    tag = Tag(raw="", name=raw_name.lower().replace("\x00", "\ufffd"), raw_name=raw_name,
              end=end, tidy=bool(CM_TAG_NAME.fullmatch(raw_name)))
    seen: set[str] = set()
    while True:
        # before attribute name
        m = _WS.match(data, i, n)
        sep, i = m.group(), m.end()
        if i >= n:
            return more()
        c = data[i]
        if sep.strip(" \t"):
            tag.tidy = False  # a line break or form feed inside the tag
        if c == ">":
            break
        if c == "/":  # self-closing start tag state
            i += 1
            if i >= n:
                return more()
            if data[i] == ">":
                tag.self_closing = True
                if end:
                    tag.tidy = False
                break
            tag.tidy = False  # a "/" between attributes: a separator, as whitespace
            continue
        # attribute name (an "=" here is its first character)
        name_start = i
        m = _ATTR_NAME.match(data, i + 1 if c == "=" else i, n)
        i = m.end()
        raw_attr = data[name_start:i]
        if "<" in raw_attr:
            return NOT_A_TAG, None
        if i >= n:
            return more()
        attr = Attr(name=raw_attr.lower().replace("\x00", "\ufffd"), raw_name=raw_attr,
                    raw_value=None)
        tidy_attr = bool(sep) and end is False and bool(CM_ATTR_NAME.fullmatch(raw_attr))
        # after attribute name
        m = _WS.match(data, i, n)
        if m.end() >= n:
            return more()
        if data[m.end()] == "=":
            if m.group():
                tidy_attr = False
            i = m.end() + 1
            m = _WS.match(data, i, n)
            if m.group():
                tidy_attr = False
            i = m.end()
            if i >= n:
                return more()
            q = data[i]
            if q in "\"'":
                close = data.find(q, i + 1, n)
                if close == -1:
                    return more()
                attr.raw_value, attr.quote, i = data[i + 1:close], q, close + 1
                if i >= n:
                    return more()
                if data[i] not in WHITESPACE and data[i] not in "/>":
                    tag.tidy = False  # no whitespace before the next attribute
                if _UNTIDY_QUOTED.search(attr.raw_value):
                    tidy_attr = False
            elif q == ">":
                attr.raw_value, tidy_attr = "", False  # "=" and no value
            else:
                m = _UNQUOTED.match(data, i, n)
                attr.raw_value, i = m.group(), m.end()
                if "<" in attr.raw_value:
                    return NOT_A_TAG, None
                if i >= n:
                    return more()
                if not _CM_UNQUOTED.fullmatch(attr.raw_value) or "\x00" in attr.raw_value:
                    tidy_attr = False
        if attr.name in seen:
            tidy_attr = False  # the browser keeps the first one only
        else:
            seen.add(attr.name)
            tag.attrs.append(attr)
        tag.tidy = tag.tidy and tidy_attr
    # data[i] is the closing ">"
    tag.raw = data[start:i + 1]
    if end and tag.attrs:
        tag.tidy = False
    return i + 1, tag
