"""Built-in output sanitizers: stateful scanners over the streamed reply.

A model's markup arrives split at arbitrary points (``"<thi"`` + ``"nk>"``), so
each sanitizer is a small scanner that holds back only the few characters that
might still turn into something it must remove, and passes everything else
through at once. None of them escapes text: ``It's`` and ``a < b`` stay as they
are, for the display and for speech.

- ``strip_think`` drops ``<think>...</think>`` reasoning blocks.
- ``sanitize_html`` drops script/style/iframe/object elements, embed/link/meta
  tags and event-handler or ``javascript:`` attributes; other markup and all
  text are kept. Unless ``remote_images: true``, images that a client would
  fetch from another server (``<img src="https://...">``, ``![alt](https://...)``)
  are removed too (markdown ones leave their alt text): a prompt-injected reply
  could otherwise smuggle conversation text out in an image URL.
- ``stop_at_role_leak`` ends the reply when the model starts writing the user's
  turn (a line starting ``User:`` or ``<user name>:``, or a chat-template token).
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

import regex
from pydantic import Field

from companion_engine import hookimpl
from companion_engine.stages import Sanitizer, StageOptions

if TYPE_CHECKING:
    from companion_engine.turn import Turn


class Scanner(Protocol):
    """Incremental text filter: ``feed`` returns what is safe to pass on now."""

    stopped: bool

    def feed(self, text: str) -> str: ...

    def finish(self) -> str: ...


async def run_scanner(
    scanner: Scanner, chunks: AsyncIterator[str], on_stop: Callable[[], None] | None = None,
) -> AsyncIterator[str]:
    """Drive ``scanner`` over a stream; stop reading the source once it says so."""
    async for chunk in chunks:
        out = scanner.feed(chunk)
        if out:
            yield out
        if scanner.stopped:
            if on_stop is not None:
                on_stop()
            return
    out = scanner.finish()
    if out:
        yield out


def _partial_suffix(text: str, candidates: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that starts one of ``candidates`` (lower-case)."""
    longest = max(map(len, candidates), default=0)
    tail = text[-longest:].lower() if longest else ""
    for n in range(min(len(tail), longest - 1), 0, -1):
        piece = tail[-n:]
        if any(c.startswith(piece) for c in candidates):
            return n
    return 0


# --- strip_think ------------------------------------------------------------------------------


class ThinkStripper:
    """Removes ``<think>...</think>`` (any listed tag name, any case) from a stream."""

    def __init__(self, tags: list[str]) -> None:
        names = "|".join(re.escape(t) for t in tags)
        self._open = re.compile(rf"<({names})>", re.IGNORECASE)
        self._opens = tuple(f"<{t.lower()}>" for t in tags)
        self._close: re.Pattern[str] | None = None
        self._close_tag = ""
        self._hold = ""
        self._inside = False
        #: Drop whitespace until visible text: at the start and after a block.
        self._lstrip = True
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._hold and not self._inside and "<" not in text:
            return self._emit(text)  # the common case: plain text
        data, self._hold = self._hold + text, ""
        out: list[str] = []
        pos = 0
        while pos < len(data):
            if self._inside:
                assert self._close is not None
                m = self._close.search(data, pos)
                if m is None:
                    keep = _partial_suffix(data[pos:], (self._close_tag,))
                    self._hold = data[len(data) - keep:] if keep else ""
                    break
                self._inside, self._lstrip, pos = False, True, m.end()
                continue
            m = self._open.search(data, pos)
            if m is None:
                keep = _partial_suffix(data[pos:], self._opens)
                out.append(self._emit(data[pos:len(data) - keep]))
                self._hold = data[len(data) - keep:] if keep else ""
                break
            out.append(self._emit(data[pos:m.start()]))
            self._close_tag = f"</{m.group(1).lower()}>"
            self._close = re.compile(re.escape(self._close_tag), re.IGNORECASE)
            self._inside, pos = True, m.end()
        return "".join(out)

    def _emit(self, text: str) -> str:
        if self._lstrip and text:
            text = text.lstrip()
            self._lstrip = not text
        return text

    def finish(self) -> str:
        """An unclosed block is dropped; a held partial tag was just text."""
        held, self._hold = self._hold, ""
        return "" if self._inside else self._emit(held)


class StripThink(Sanitizer):
    """Drop ``<think>`` reasoning blocks, even when the tags are split across chunks."""

    name: ClassVar[str] = "strip_think"
    description: ClassVar[str] = "drop <think>...</think> reasoning from the reply"

    class Options(StageOptions):
        tags: list[str] = Field(default_factory=lambda: ["think", "thinking"], min_length=1)

    options: Options

    def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        return run_scanner(ThinkStripper(self.options.tags), chunks)


# --- sanitize_html ----------------------------------------------------------------------------

#: Elements removed together with everything up to their end tag.
DROP_WITH_CONTENT = frozenset({"script", "style", "iframe", "object", "applet", "noscript",
                               "noembed", "noframes", "frameset", "template"})
#: Elements removed as a tag (void or harmless without their attributes).
DROP_TAG = frozenset({"embed", "link", "meta", "base", "frame"})
#: Longest tag we wait for; a ``<`` with no ``>`` within this is just text.
MAX_TAG = 1024
#: How a ``<`` that starts like a tag (``<x``, ``</``) but is not one goes out. Left as
#: ``<``, a removal could join it to what follows into live markup
#: (``<scr</script>ipt>`` -> ``<script>``), so only this ambiguous case is escaped.
LT = "&lt;"

_TAG_START = re.compile(r"</?[A-Za-z]")
_TAG_NAME = re.compile(r"</?([A-Za-z][A-Za-z0-9:-]*)")
_ATTR = re.compile(r"""(\s+)([^\s=/>]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""")
#: What no kept tag may still contain after its attributes were cleaned.
_ACTIVE = re.compile(r"""[\s/"']on[a-z]+\s*=|javascript:|vbscript:|data:text/html|expression\(""")
#: Attributes holding a URL a browser might navigate to or load.
URL_ATTRS = frozenset({"href", "src", "action", "formaction", "data", "xlink:href", "background",
                       "poster", "lowsrc", "dynsrc", "codebase", "cite", "ping"})
_URL_NOISE = re.compile(r"[\s\x00-\x1f]+")


def _safe_attr(name: str, value: str) -> bool:
    """False for event handlers, ``srcdoc`` and script URLs (entities and tabs decoded)."""
    n = name.lower()
    if n.startswith("on") or n == "srcdoc":
        return False
    if n not in URL_ATTRS and n != "style":
        return True
    v = _URL_NOISE.sub("", html.unescape(value.strip("\"'"))).lower()
    if n == "style":
        return "expression(" not in v and "javascript:" not in v
    return not v.startswith(("javascript:", "vbscript:", "data:text/html"))


def _clean_tag(tag: str, name_end: int) -> str:
    """The tag without unsafe attributes; dropped whole if anything active is left."""
    body = _ATTR.sub(lambda a: a.group(0) if _safe_attr(a.group(2), a.group(3) or "") else "",
                     tag[name_end:])
    cleaned = tag[:name_end] + body
    plain = _URL_NOISE.sub("", html.unescape(cleaned)).lower()
    return "" if _ACTIVE.search(cleaned.lower()) or _ACTIVE.search(plain) else cleaned


def _tag_end(data: str, start: int) -> int:
    """Index just past the ``>`` closing the tag at ``start``.

    Quotes count only around attribute values (after ``=``), as in browsers.
    -1: no ``>`` yet; -2: an unquoted ``<`` comes first, so this was not a tag.
    """
    limit = min(len(data), start + MAX_TAG)
    i = start + 1
    while i < limit:
        c = data[i]
        if c == ">":
            return i + 1
        if c == "<":
            return -2
        if c == "=":
            i += 1
            while i < limit and data[i] in " \t\n\r\f":
                i += 1
            if i < limit and data[i] in "\"'":
                close = data.find(data[i], i + 1, limit)
                if close == -1:
                    return -1
                i = close
            else:
                continue  # an unquoted value: look at its first character as usual
        i += 1
    return -1


#: Tags that make a browser fetch a URL by themselves (no click needed).
FETCHING_TAGS = frozenset({"img", "image", "video", "audio", "source", "track", "picture",
                           "input", "body", "table", "td", "svg", "use"})
FETCH_ATTRS = frozenset({"src", "srcset", "poster", "background", "data", "href", "xlink:href",
                         "lowsrc", "dynsrc"})


def is_remote_url(url: str) -> bool:
    """True for a URL that points at another server (any scheme but ``data:image/``)."""
    u = _URL_NOISE.sub("", html.unescape(url.strip("\"' <>"))).lower()
    if u.startswith("data:image/"):
        return False
    return bool(re.match(r"[a-z][a-z0-9+.-]*:|//|\\\\", u))


def _fetches_remote(tag: str, name_end: int) -> bool:
    return any(a.group(2).lower() in FETCH_ATTRS and is_remote_url(a.group(3) or "")
               for a in _ATTR.finditer(tag, name_end))


class HTMLSanitizer:
    """Streams text through, removing active markup and keeping everything else verbatim."""

    def __init__(self, remote_images: bool = True) -> None:
        self.remote_images = remote_images
        self._hold = ""
        #: Inside a dropped element: the compiled end-tag pattern we skip to.
        self._skip_to: re.Pattern[str] | None = None
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._hold and self._skip_to is None and "<" not in text:
            return text
        data, self._hold = self._hold + text, ""
        out: list[str] = []
        pos = 0
        n = len(data)
        while pos < n:
            if self._skip_to is not None:
                m = self._skip_to.search(data, pos)
                if m is None:
                    lt = data.rfind("<", pos)  # maybe the start of the end tag
                    self._hold = data[lt:] if lt != -1 and n - lt < 64 else ""
                    return "".join(out)
                self._skip_to, pos = None, m.end()
                continue
            lt = data.find("<", pos)
            if lt == -1:
                out.append(data[pos:])
                break
            out.append(data[pos:lt])
            if lt + 1 >= n or (data[lt + 1] in "/" and lt + 2 >= n):
                self._hold = data[lt:]  # "<" or "</" at the end: wait for more
                break
            if not _TAG_START.match(data, lt):
                out.append("<")  # "a < b", "<3": text
                pos = lt + 1
                continue
            end = _tag_end(data, lt)
            if end == -1 or end == -2:
                if end == -1 and n - lt < MAX_TAG:
                    self._hold = data[lt:]  # the tag is still arriving
                    break
                out.append(LT)  # see LT: text around a removal must not become a tag
                pos = lt + 1
                continue
            out.append(self._tag(data[lt:end]))
            pos = end
        return "".join(out)

    def _tag(self, tag: str) -> str:
        m = _TAG_NAME.match(tag)
        assert m is not None
        name = m.group(1).lower()
        closing = tag.startswith("</")
        if name in DROP_WITH_CONTENT:
            if not closing and not tag.endswith("/>"):
                self._skip_to = re.compile(rf"</{name}\s*>", re.IGNORECASE)
            return ""
        if name in DROP_TAG:
            return ""
        if not (closing or self.remote_images) and name in FETCHING_TAGS \
                and _fetches_remote(tag, m.end()):
            return ""
        return tag if closing else _clean_tag(tag, m.end())

    def finish(self) -> str:
        """A dropped element left open is dropped; a held fragment was text after all."""
        held, self._hold = self._hold, ""
        if self._skip_to is not None:
            return ""
        if _TAG_START.match(held):  # never closed: not a tag, but its text may hold markup
            return LT + self.feed(held[1:]) + self.finish()
        return held


#: Markdown image parts (CommonMark): alt text with one level of nested brackets, a
#: destination bare or in ``<...>``, an optional title in quotes or parentheses.
_ALT = r"((?:[^\[\]\n]|\[[^\[\]\n]{0,256}\]){0,256})"
_DEST = r"(?:<([^<>\n]{0,2048})>|([^\s()<>]{0,2048}))"
_TITLE = r"""(?:\s+(?:"[^"\n]{0,256}"|'[^'\n]{0,256}'|\([^()\n]{0,256}\)))?"""
#: ``regex`` (not ``re``): its partial matching tells whether held text may still match.
_MD_IMAGE = regex.compile(rf"!\[{_ALT}\]\(\s*{_DEST}{_TITLE}\s*\)")
#: A link reference definition line, ``[label]: url "title"`` (what ``![x][label]`` loads).
_MD_DEFINITION = regex.compile(rf"[ ]{{0,3}}\[([^\]\n]{{1,256}})\]:[ \t]*{_DEST}[^\n]*\n")
#: Longest text held back while it may still become one of the above.
MAX_MD_HOLD = 2600


def _dest(m: regex.Match[str], first: int) -> str:
    return m.group(first) if m.group(first) is not None else (m.group(first + 1) or "")


class MarkdownImageStripper:
    """Replaces ``![alt](remote-url)`` by ``alt`` and drops remote link definitions.

    Only text that may still become an image or a definition is held back (decided
    by partial matching, so the result never depends on chunking), and never more
    than ``MAX_MD_HOLD`` characters.
    """

    def __init__(self) -> None:
        self._hold = ""
        self._line_start = True
        self.stopped = False

    def feed(self, text: str, final: bool = False) -> str:
        data, self._hold = self._hold + text, ""
        if not final and "!" not in data and "[" not in data:
            if data:
                self._line_start = data.endswith("\n")
            return data
        out: list[str] = []
        pos, n = 0, len(data)
        line_start = self._line_start
        while pos < n:
            if line_start and data[pos:pos + 4].lstrip(" ").startswith("["):
                probe = data + "\n" if final and "\n" not in data[pos:] else data
                m = _MD_DEFINITION.match(probe, pos, partial=not final)
                if m is not None and not m.partial:
                    if not is_remote_url(_dest(m, 2)):
                        out.append(data[pos:min(m.end(), n)])
                    pos = min(m.end(), n)
                    continue
                if m is not None and n - pos < MAX_MD_HOLD:
                    self._hold = data[pos:]  # a definition line may be arriving
                    break
            line_start = False
            if data[pos] == "!":
                m = _MD_IMAGE.match(data, pos, partial=not final)
                if m is not None and not m.partial:
                    out.append(m.group(1) if is_remote_url(_dest(m, 2)) else m.group(0))
                    pos = m.end()
                    continue
                if m is not None and n - pos < MAX_MD_HOLD:
                    self._hold = data[pos:]  # may still become an image: wait
                    break
            nxt = min((i for i in (data.find("!", pos + 1), data.find("\n", pos) + 1)
                       if i > pos), default=n)
            out.append(data[pos:nxt])
            line_start = data[nxt - 1] == "\n"
            pos = nxt
        if not self._hold:
            self._line_start = line_start
        return "".join(out)

    def finish(self) -> str:
        held, self._hold = self._hold, ""
        return self.feed(held, final=True) if held else ""


class ScannerChain:
    """Several scanners run one after the other as one."""

    def __init__(self, *scanners: Scanner) -> None:
        self.scanners = scanners
        self.stopped = False

    def feed(self, text: str) -> str:
        for s in self.scanners:
            text = s.feed(text) if text else text
        return text

    def finish(self) -> str:
        text = ""
        for s in self.scanners:
            text = (s.feed(text) if text else "") + s.finish()
        return text


class SanitizeHTML(Sanitizer):
    """Remove script/style/iframe and event-handler markup; never escape text."""

    name: ClassVar[str] = "sanitize_html"
    description: ClassVar[str] = "remove script, style, iframe and event-handler markup"

    class Options(StageOptions):
        #: Keep images that load from other servers (``<img src=https://...>``,
        #: ``![](https://...)``). Off by default: a prompt-injected reply could leak the
        #: conversation through such a URL the moment a client renders it.
        remote_images: bool = False

    options: Options

    def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        if self.options.remote_images:
            return run_scanner(HTMLSanitizer(), chunks)
        return run_scanner(ScannerChain(HTMLSanitizer(remote_images=False),
                                        MarkdownImageStripper()), chunks)


# --- stop_at_role_leak ------------------------------------------------------------------------

#: Chat-template tokens that never belong in a reply.
DEFAULT_MARKERS = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>",
                   "<|user|>", "<|end|>", "<start_of_turn>", "<end_of_turn>", "[INST]"]
#: Decoration a speaker label may carry: ``### User:``, ``**User:**``, ``> User:``.
_DECOR = " \t#*_>"


class RoleLeakGuard:
    """Stops the stream where a line starts with a user label or a template token appears."""

    def __init__(self, names: list[str], markers: list[str]) -> None:
        uniq = sorted({n.strip() for n in names if n.strip()}, key=len, reverse=True)
        self._names = tuple(n.lower() for n in uniq)
        self._label = re.compile(
            rf"[{re.escape(_DECOR)}]*(?:{'|'.join(re.escape(n) for n in uniq)})\s*\**\s*:",
            re.IGNORECASE)
        self._markers = tuple(m.lower() for m in markers if m)
        self._marker_re = (re.compile("|".join(re.escape(m) for m in markers if m),
                                      re.IGNORECASE) if self._markers else None)
        starts = {m[0] for m in markers if m} | {m[0].upper() for m in markers if m} | {"\n"}
        #: A piece without any of these (mid-line) passes untouched.
        self._risky = re.compile(f"[{re.escape(''.join(sorted(starts)))}]")
        self._hold = ""
        #: True while inside a line already known not to be a label.
        self._in_line = False
        self.stopped = False

    def feed(self, text: str) -> str:
        if (self._in_line and not self._hold and not text[-1:].isspace()
                and not self._risky.search(text)):
            return text  # mid-line, nothing that could start a marker
        data, self._hold = self._hold + text, ""
        marker = self._marker_re.search(data) if self._marker_re is not None else None
        if marker is not None:
            data = data[:marker.start()]
        out = self._lines(data)
        if self.stopped:
            return out.rstrip()
        if marker is not None:
            self.stopped = True
            return (out + self._release()).rstrip()
        if not self._hold:
            keep = _partial_suffix(out, self._markers)
            if keep:
                out, self._hold = out[:-keep], out[-keep:]
        # Trailing whitespace waits for what follows: if the reply stops there, it goes too.
        visible = out.rstrip()
        if len(visible) < len(out):
            out, self._hold = visible, out[len(visible):] + self._hold
        return out

    def _lines(self, data: str) -> str:
        """Pass decided text; hold an undecided line start; stop at a label."""
        out: list[str] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._in_line:
                nl = data.find("\n", pos)
                if nl == -1:
                    out.append(data[pos:])
                    break
                out.append(data[pos:nl])
                pos, self._in_line = nl, False
            start = pos
            while pos < n and data[pos] in "\r\n":
                pos += 1
            nl = data.find("\n", pos)
            line = data[pos:] if nl == -1 else data[pos:nl]
            if self._label.match(line):
                self.stopped = True
                break
            if nl == -1 and self._undecided(line):
                self._hold = data[start:]
                break
            out.append(data[start:pos])
            self._in_line = True
        return "".join(out)

    def _undecided(self, line: str) -> bool:
        """Could ``line`` (so far) still become ``Name:``?"""
        if not self._names:
            return False
        s = line.lstrip(_DECOR).lower()
        if not s:
            return True
        for name in self._names:
            if name.startswith(s):
                return True
            if s.startswith(name) and not s[len(name):].strip(" *"):
                return True
        return False

    def _release(self) -> str:
        """The held line start, unless it is a label after all."""
        held, self._hold = self._hold, ""
        return "" if self._label.match(held.lstrip("\r\n")) else held

    def finish(self) -> str:
        return "" if self.stopped else self._release()


class StopAtRoleLeak(Sanitizer):
    """End the reply when the model starts writing the user's turn."""

    name: ClassVar[str] = "stop_at_role_leak"
    description: ClassVar[str] = "end the reply where the model starts speaking as the user"

    class Options(StageOptions):
        #: More speaker labels that end the reply (the user's name and ``User`` always do).
        names: list[str] = Field(default_factory=list)
        #: Chat-template tokens that end the reply wherever they appear.
        markers: list[str] = Field(default_factory=lambda: list(DEFAULT_MARKERS))

    options: Options

    def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        names = ["User", turn.user_name, *self.options.names]
        guard = RoleLeakGuard(names, self.options.markers)

        return run_scanner(guard, chunks, lambda: turn.stop("role_leak"))


@hookimpl
def register_sanitizers() -> list[type[Sanitizer]]:
    return [StripThink, SanitizeHTML, StopAtRoleLeak]
