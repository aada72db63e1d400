"""Built-in output sanitizers: stateful scanners over the streamed reply.

A model's markup arrives split at arbitrary points (``"<thi"`` + ``"nk>"``), so
each sanitizer is a small scanner that holds back only the few characters that
might still turn into something it must remove, and passes everything else
through at once. None of them escapes text: ``It's`` and ``a < b`` stay as they
are, for the display and for speech.

- ``strip_think`` drops ``<think>...</think>`` reasoning blocks.
- ``sanitize_html`` removes what a browser, or a markdown renderer and then a
  browser, would execute: script/style/iframe/object elements, embed/link/meta
  tags, event-handler attributes, styles that run code, and ``javascript:``,
  ``vbscript:`` and ``data:text/html`` URLs in attributes, links, images and
  reference definitions (after entity decoding, however obfuscated); other
  markup and all text are kept. Unless ``remote_images: true``, everything that
  a client would fetch from another server by itself (``<img src=...>``,
  ``srcset``, ``poster``, ``background``, ``style="...url(...)"``,
  ``![alt](https://...)`` and ``[ref]: https://...``) goes too (markdown images
  leave their alt text): a prompt-injected reply could otherwise smuggle
  conversation text out in an image URL. See ``companion_engine.builtin.markup``.
- ``stop_at_role_leak`` ends the reply when the model starts writing the user's
  turn (a line starting ``User:`` or ``<user name>:``, or a chat-template token).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

from pydantic import Field

from companion_engine import hookimpl
from companion_engine.builtin.markup.html import HTMLSanitizer
from companion_engine.builtin.markup.markdown import LinkGuard, MarkdownImageStripper
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
# The passes live in ``companion_engine.builtin.markup`` (tags as HTML5 tokenises them, the one
# policy of what a browser would fetch or run, the HTML and markdown passes).


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
    """Remove markup that would run a script or load from another server; never escape text."""

    name: ClassVar[str] = "sanitize_html"
    description: ClassVar[str] = "remove script, style, iframe and event-handler markup"

    class Options(StageOptions):
        #: Keep images that load from other servers (``<img src=https://...>``,
        #: ``![](https://...)``, ``style="background:url(https://...)"``). Off by default: a
        #: prompt-injected reply could leak the conversation through such a URL the moment a
        #: client renders it.
        remote_images: bool = False

    options: Options

    def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        return run_scanner(sanitize_scanner(self.options.remote_images), chunks)


def sanitize_scanner(remote_images: bool = False) -> ScannerChain:
    """The three passes of ``sanitize_html``: HTML, then markdown images, then every link."""
    return ScannerChain(HTMLSanitizer(remote_images=remote_images),
                        MarkdownImageStripper(remote_images=remote_images),
                        LinkGuard(remote_images=remote_images))


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
