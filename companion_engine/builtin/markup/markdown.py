"""The markdown passes of ``sanitize_html``: what a markdown renderer would turn into a URL.

A renderer makes links and images from ``[text](dest)``, ``![alt](dest)``, ``[ref]`` with a
reference definition ``[ref]: dest`` at the start of a line, and autolinks ``<scheme:...>``
(those are tags to the HTML pass, which checks them). Destinations are read as CommonMark
reads them: backslash escapes and character references resolved, then judged by the policy.

- ``MarkdownImageStripper`` rewrites the well-formed cases the way a reader expects: an image
  that would load from another server (or run a script) becomes its alt text, and such a
  reference definition line goes.
- ``LinkGuard`` then checks every destination of what is left, however it is nested or
  broken: after any ``](`` and ``]:`` a destination that runs a script is removed, and one
  that loads a remote image is removed where an image may be open. It follows the brackets
  as CommonMark does (escapes, code spans, HTML tags and autolinks hide them) and, where the
  two readings could differ (a backtick inside an image's text, a link inside an image),
  assumes the image is still open.

Both skip the HTML tags and autolinks the HTML pass let through (a markdown renderer passes
those whole), and never remove a quote, ``<`` or ``>``, so no tag is changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import regex

from companion_engine.builtin.markup.policy import is_remote_url, is_script_url

#: Characters that may open a line before a reference definition (indentation, block quote
#: markers, list markers): a ``[`` after only these may start one.
PREFIX_CHARS = " \t>-+*.)0123456789"
#: An HTML tag as CommonMark reads one (what the HTML pass writes) or an autolink: opaque.
ATOM = re.compile(
    r"</[A-Za-z][A-Za-z0-9-]*[ \t]*>"
    r"|<[A-Za-z][A-Za-z0-9-]*(?:[ \t]+[A-Za-z_:][A-Za-z0-9_.:-]*"
    r"(?:[ \t]*=[ \t]*(?:[^ \t\n\r\"'=<>`]+|'[^'\n]*'|\"[^\"\n]*\"))?)*[ \t]*/?>"
    r"|<[A-Za-z][A-Za-z0-9+.-]{1,31}:[^\x00-\x20<>]*>"
    r"|<[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*>")
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
#: Characters that only ever continue alt text, a label, a title or a destination: held
#: text that ends in one and grows by more of them is no nearer to a decision.
_QUIET = re.compile(r"[A-Za-z0-9/.\-_?=&%#~+,;:@*$]+")
#: Longest text the image stripper holds back while it may still become an image.
MAX_MD_HOLD = 2600
#: Longest destination the link guard holds back before judging it by its start.
MAX_DEST = 2048

LINE_START, LINE_PREFIX, LINE_TEXT = 0, 1, 2


def line_after(text: str, state: int) -> int:
    """Where a line stands after ``text``: at its start, after prefix characters only, in text."""
    nl = text.rfind("\n")
    if nl == -1:
        if state == LINE_TEXT or not text:
            return state
        tail = text
    else:
        tail = text[nl + 1:]
        if not tail:
            return LINE_START
    return LINE_TEXT if tail.strip(PREFIX_CHARS) else LINE_PREFIX


def md_url(dest: str) -> str:
    """A destination as a renderer uses it: backslash escapes resolved (references: policy)."""
    return _MD_ESCAPE.sub(r"\1", dest) if "\\" in dest else dest


def _escaped_at_end(text: str, escaped: bool) -> bool:
    """Is the character after ``text`` escaped (an odd run of backslashes at its end)?"""
    if text[-1:] != "\\":
        return escaped if not text else False
    run = len(text) - len(text.rstrip("\\"))
    if run == len(text):
        return escaped != (run % 2 == 1)
    return run % 2 == 1


# --- the image stripper -------------------------------------------------------------------

_WS = r"[ \t]*(?:\n[ \t>]*)?"  # spaces, at most one line break
_WS1 = r"(?:[ \t]+(?:\n[ \t>]*)?|\n[ \t>]*)"  # the same, not empty
_TITLE = r"""(?:"(?:[^"\\<>\n]|\\.)*"|'(?:[^'\\<>\n]|\\.)*'|\((?:[^()\\<>\n]|\\.)*\))"""
_DEFINE = (r"(?(DEFINE)"
           r"(?P<al>(?:[^\[\]\\<`\n]|\\[^\n]|\n(?![ \t>]*\n)|\[(?&al)\])*)"
           r"(?P<pc>(?:[^\x00-\x20()<\\]|\\[^\x00-\x20]|\((?&pc)\))*))")
_DEST = (r"(?:<(?P<pd>(?:[^<>\n\\]|\\.)*)>"
         r"|(?P<rd>(?:[^\x00-\x20()<\\]|\\[^\x00-\x20]|\((?&pc)\))+))")
#: ``![alt](dest "title")``: alt with balanced brackets and no tag or code span, a bare or
#: ``<...>`` destination. ``regex`` for recursion and partial matching (whether held text may
#: still match); written so that a full match can never grow into a different one.
IMAGE = regex.compile(rf"!\[(?P<alt>(?&al))\]\({_WS}{_DEST}?(?:{_WS1}{_TITLE})?{_WS}\)"
                      + _DEFINE)
#: ``[label]: dest "title"`` at the start of a line, up to its line break.
DEFINITION = regex.compile(rf"\[(?:[^\[\]\\\n]|\\.|\n(?![ \t]*\n)){{1,999}}\]:{_WS}{_DEST}"
                           rf"(?:[ \t]+{_TITLE})?[ \t]*\n" + _DEFINE)
_STRIPPER_SPECIAL = re.compile(r"[!\[<\\\n]")


def _dest_of(m: regex.Match[str]) -> str:
    return m.group("pd") if m.group("pd") is not None else (m.group("rd") or "")


class MarkdownImageStripper:
    """Replaces ``![alt](url)`` by ``alt`` and drops ``[ref]: url`` lines, for a url that
    loads from another server (unless ``remote_images``) or runs a script.

    Only text that may still become an image or a definition is held back (decided by
    partial matching, so the result never depends on chunking), and never more than
    ``MAX_MD_HOLD`` characters.
    """

    def __init__(self, remote_images: bool = False) -> None:
        self.remote_images = remote_images
        self._hold = ""
        self._line = LINE_START
        self._escaped = False
        self.stopped = False

    def _drops(self, dest: str) -> bool:
        url = md_url(dest)
        return is_script_url(url) or (not self.remote_images and is_remote_url(url))

    def feed(self, text: str, final: bool = False) -> str:
        hold = self._hold
        if not hold and not final and "[" not in text and text[-1:] != "!":
            if text:  # nothing here can start an image or a definition
                self._line = line_after(text, self._line)
                self._escaped = _escaped_at_end(text, self._escaped)
            return text
        if (hold and not final and len(hold) + len(text) <= MAX_MD_HOLD
                and _QUIET.fullmatch(hold[-1]) and _QUIET.fullmatch(text)):
            self._hold = hold + text  # still undecided (see _QUIET)
            return ""
        data, self._hold = hold + text, ""
        out: list[str] = []
        pos, n = 0, len(data)
        line, escaped = self._line, self._escaped
        while pos < n:
            m = _STRIPPER_SPECIAL.search(data, pos)
            i = n if m is None else m.start()
            if i > pos:
                out.append(data[pos:i])
                line, escaped = line_after(data[pos:i], line), False
                pos = i
                continue
            c = data[i]
            if escaped or c in "\\\n<":
                if c == "\n":
                    out.append(c)
                    pos, escaped, line = i + 1, False, LINE_START
                elif escaped:
                    out.append(c)
                    pos, escaped, line = i + 1, False, LINE_TEXT
                elif c == "\\":
                    out.append(c)
                    pos, escaped, line = i + 1, True, LINE_TEXT
                else:
                    a = ATOM.match(data, i)
                    end = a.end() if a else i + 1
                    out.append(data[i:end])
                    pos, line = end, LINE_TEXT
                continue
            if c == "[" and line != LINE_TEXT:
                probe = data + "\n" if final else data
                d = DEFINITION.match(probe, i, partial=not final)
                if d is not None and not d.partial and d.end() - i > MAX_MD_HOLD:
                    d = None  # longer than we would ever hold: as if streamed
                if d is not None and not d.partial:
                    end = d.end()  # just past its line break
                    if self._drops(_dest_of(d)):
                        # Gone with its line break when the line held nothing else.
                        pos = min(end, n) if line == LINE_START else end - 1
                        if pos >= n or data[pos] != "\n":
                            line = LINE_START
                        continue
                    out.append(data[i:min(end, n)])
                    pos, line = min(end, n), LINE_START
                    continue
                if d is not None and n - i <= MAX_MD_HOLD:
                    self._hold = data[i:]  # a definition may be arriving
                    break
            elif c == "!":
                if i + 1 >= n and not final:
                    self._hold = data[i:]  # "!" + "[" would start an image
                    break
                if data.startswith("![", i):
                    im = IMAGE.match(data, i, partial=not final)
                    if im is not None and not im.partial and im.end() - i > MAX_MD_HOLD:
                        im = None  # longer than we would ever hold: as if streamed
                    if im is not None and not im.partial:
                        if self._drops(_dest_of(im)):
                            # The alt text in its place, read again (it may hold more).
                            data = data[:i] + im.group("alt") + data[im.end():]
                            n = len(data)
                            continue
                    elif im is not None and n - i <= MAX_MD_HOLD:
                        self._hold = data[i:]  # may still become an image: wait
                        break
            out.append(c)
            pos, line = i + 1, LINE_TEXT
        self._line, self._escaped = line, escaped
        return "".join(out)

    def finish(self) -> str:
        held, self._hold = self._hold, ""
        return self.feed(held, final=True) if held else ""


# --- the link guard -----------------------------------------------------------------------

_GUARD_SPECIAL = re.compile(r"[\[\]!\\`<\n]")
#: Where a bare destination ends: whitespace, a control character, a quote or angle bracket
#: (never removed, so no tag around it changes), or an unbalanced ``)``.
_TOKEN_STOP = frozenset("\"'<>") | frozenset(chr(c) for c in range(0x21)) | {"\x7f"}
#: A link or image may still be open after these (the stack holds them).
_MAX_OPENERS = 256


@dataclass(slots=True)
class _Dest:
    """At a destination: after ``](`` or ``]:``."""

    definition: bool  # after "]:"
    remote: bool  # a remote URL here would load an image: remove it
    newline: bool = False  # the one line break allowed before it was seen


class LinkGuard:
    """Removes every link, image or definition destination that runs a script (and remote
    image destinations unless ``remote_images``), wherever the reply puts it."""

    def __init__(self, remote_images: bool = False) -> None:
        self.remote_images = remote_images
        self._hold = ""
        self._line = LINE_START
        self._blank = True  # the line has only spaces and tabs so far
        #: Open brackets of this paragraph: (image?, at a line start?, backticks seen before).
        self._stack: list[tuple[bool, bool, int]] = []
        self._ticks = 0
        self._maybe_image = False  # an image may be open that the stack lost track of
        self._escaped = False
        self._bang = False
        #: Just after "]": (it closed an image, an image is open outside it, definition place).
        self._after: tuple[bool, bool, bool] | None = None
        self._dest: _Dest | None = None
        #: Dropping the rest of a destination too long to hold: (True, pointy?).
        self._token: tuple[bool, bool] | None = None
        self._depth = 0
        self._token_escaped = False
        self.stopped = False

    def feed(self, text: str, final: bool = False) -> str:
        if (not self._hold and not final and self._dest is None and self._token is None
                and self._after is None and "[" not in text and "]" not in text
                and (not (self._stack or self._maybe_image) or ("`" not in text
                                                                 and "\n" not in text))):
            if text:
                self._text(text)
            return text
        hold = self._hold
        if (hold and not final and len(hold) + len(text) < MAX_DEST
                and _QUIET.fullmatch(hold[-1]) and _QUIET.fullmatch(text)):
            self._hold = hold + text  # a destination still arriving (see _QUIET)
            return ""
        data, self._hold = hold + text, ""
        out: list[str] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._token is not None:
                pos = self._stream_token(data, pos, out)
                continue
            if self._after is not None:
                closed_image, outer_image, definition = self._after
                self._after = None
                c = data[pos]
                if c in "(:":
                    out.append(c)
                    self._text(c)
                    if c == "(":
                        if outer_image:
                            self._maybe_image = True  # a link inside an image: unsure
                        self._dest = _Dest(definition=False,
                                           remote=closed_image or outer_image)
                    else:
                        self._dest = _Dest(definition=True, remote=definition)
                    pos += 1
                    continue
            if self._dest is not None:
                nxt = self._destination(data, pos, out, final)
                if nxt < 0:
                    self._hold = data[pos:]  # the destination is still arriving
                    break
                pos = nxt
                continue
            m = _GUARD_SPECIAL.search(data, pos)
            i = n if m is None else m.start()
            if i > pos:
                out.append(data[pos:i])
                self._text(data[pos:i])
                pos = i
                continue
            pos = self._special(data, i, out)
        return "".join(out)

    # -- plain text and the bracket structure ------------------------------------------------

    def _text(self, text: str) -> None:
        """Follow ``text`` that holds no bracket (line position, blank line, escapes)."""
        nl = text.rfind("\n")
        if nl != -1:
            self._blank = not text[nl + 1:].strip(" \t")
            self._line = line_after(text, self._line)
        else:
            if self._blank:
                self._blank = not text.strip(" \t")
            if self._line != LINE_TEXT:
                self._line = line_after(text, self._line)
        last = text[-1]
        if last == "\\" or last == "!":
            before = self._escaped
            self._escaped = _escaped_at_end(text, before)
            self._bang = last == "!" and not _escaped_at_end(text[:-1], before)
        else:
            self._escaped = self._bang = False

    def _special(self, data: str, i: int, out: list[str]) -> int:
        c = data[i]
        escaped = self._escaped
        if c == "<":
            a = ATOM.match(data, i)
            piece = a.group() if a else "<"  # a tag or autolink: opaque, as to a renderer
            out.append(piece)
            self._text(piece)
            return i + len(piece)
        out.append(c)
        if c == "\n":
            if self._blank:  # a blank line: the paragraph ends, and every bracket with it
                self._stack.clear()
                self._maybe_image, self._ticks = False, 0
            self._line, self._blank, self._escaped, self._bang = LINE_START, True, False, False
            return i + 1
        bang = self._bang
        line = self._line
        self._line, self._blank, self._escaped, self._bang = LINE_TEXT, False, False, False
        if c == "\\":
            self._escaped = not escaped
        elif c == "`":
            self._ticks += 1  # a code span may hide brackets
        elif c == "!":
            self._bang = not escaped
        elif c == "[" and not escaped:
            if len(self._stack) >= _MAX_OPENERS and self._stack.pop(0)[0]:
                self._maybe_image = True
            self._stack.append((bang, line != LINE_TEXT and not bang, self._ticks))
        elif c == "]":
            outer = self._maybe_image or any(o[0] for o in self._stack)
            if escaped or not self._stack:
                self._after = (False, outer, False)
            else:
                image, at_line_start, ticks = self._stack.pop()
                if image and ticks != self._ticks:
                    self._maybe_image = True  # a code span may have hidden this "]"
                outer = self._maybe_image or any(o[0] for o in self._stack)
                self._after = (image, outer, at_line_start)
        return i + 1

    # -- destinations -----------------------------------------------------------------------

    def _destination(self, data: str, pos: int, out: list[str], final: bool) -> int:
        """At a destination: pass or remove it. The next position, or -1 to wait."""
        d = self._dest
        assert d is not None
        n = len(data)
        j = pos
        while j < n:  # spaces, one line break, then the next line's indentation and ">"
            c = data[j]
            if c == "\n":
                if d.newline:
                    break  # a blank line: no destination
                d.newline = True
            elif not (c in " \t" or (c == ">" and d.newline)):
                break
            j += 1
        if j > pos:
            out.append(data[pos:j])
            self._text(data[pos:j])
        if j >= n:
            if final:
                self._dest = None
            return n
        if data[j] == "\n" or (data[j] in _TOKEN_STOP and data[j] != "<") or data[j] == ")":
            self._dest = None  # no destination (or one a browser reads as a relative path)
            return j
        end = self._token_end(data, j, final)
        if end is None:  # a "<" that does not open a destination
            self._dest = None
            return j
        pointy = data[j] == "<"
        if end == -1:  # the destination is still arriving
            return -1 if j == pos else j
        if end == -2:  # too long to hold: judge it by its start
            if self._judge(data[j:j + MAX_DEST], pointy, d, None) is not False:
                self._token = (True, pointy)  # drop the rest as it streams
                self._depth, self._token_escaped = 0, False
                return j + 1 if pointy else j
            return self._keep(data, j, data[j:j + MAX_DEST])
        token = data[j:end]
        verdict = self._judge(token, pointy, d, self._follows(data, end, final))
        if verdict is None:
            return -1 if j == pos else j  # what follows decides: wait for it
        if verdict:
            return end  # removed; what is now at the destination is checked again
        return self._keep(data, j, token)

    def _keep(self, data: str, j: int, token: str) -> int:
        """A destination that stays is read again as text: if the renderer rejects the link
        (say, text after a definition's URL), what it holds is inline markdown after all."""
        self._dest = None
        if ("[" in token or "]" in token or len(token) >= MAX_DEST) and (
                self._maybe_image or any(o[0] for o in self._stack)):
            self._maybe_image = True  # its brackets count or not: an image may stay open
        return j

    def _token_end(self, data: str, j: int, final: bool) -> int | None:
        """End of the destination starting at ``j``: -1 when the data stops first, -2 when
        it is longer than ``MAX_DEST`` (however the rest arrives), None: not a destination."""
        n = len(data)
        limit = min(n, j + MAX_DEST)
        k = j + 1 if data[j] == "<" else j
        depth = 0
        while k < limit:
            c = data[k]
            if c == "\\" and (data[j] == "<" or k + 1 >= n or data[k + 1] not in _TOKEN_STOP):
                if k + 1 < n and data[k + 1] == "\n":
                    return None if data[j] == "<" else k + 1
                k += 2  # an escaped character (a backslash before a space is just one)
                continue
            if data[j] == "<":
                if c == ">":
                    return k + 1
                if c in "<\n":
                    return None
            elif c in _TOKEN_STOP:
                return k
            elif c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    return k
                depth -= 1
            k += 1
        if k >= j + MAX_DEST:
            return -2
        if not final:
            return -1
        return None if data[j] == "<" else n  # the reply ends: so does a bare destination

    def _follows(self, data: str, end: int, final: bool) -> str | None:
        """The first character after a destination and its spaces ("" at the end of the
        reply; None: not arrived yet)."""
        k, newline, n = end, False, len(data)
        while k < n:
            c = data[k]
            if c == "\n" and not newline:
                newline = True
            elif not (c in " \t" or (c == ">" and newline)):
                return c
            k += 1
        return "" if final else None

    def _judge(self, token: str, pointy: bool, d: _Dest, follows: str | None) -> bool | None:
        """Remove this destination? None: it depends on what follows (not arrived yet)."""
        url = md_url(token[1:].removesuffix(">") if pointy else token)
        if is_script_url(url):
            return True
        if self.remote_images or not d.remote or not is_remote_url(url):
            return False
        if d.definition:
            return True
        if follows is None:
            return None
        # A complete image would load: ")" or a title next, or the destination goes on as
        # CommonMark reads it (our token stops at quotes and angle brackets, it does not).
        return follows != "" and follows in ')"\'(<>'

    def _stream_token(self, data: str, pos: int, out: list[str]) -> int:
        """Drop the rest of a destination too long to hold (it ends as ``_token_end`` says)."""
        assert self._token is not None
        _, pointy = self._token
        n, k = len(data), pos
        while k < n:
            c = data[k]
            if self._token_escaped:
                self._token_escaped = False
                if c == "\n" or (not pointy and c in _TOKEN_STOP):
                    break
            elif c == "\\":
                self._token_escaped = True
            elif pointy:
                if c == ">":
                    k += 1
                    break
                if c in "<\n":
                    break
            elif c in _TOKEN_STOP:
                break
            elif c == "(":
                self._depth += 1
            elif c == ")":
                if self._depth == 0:
                    break
                self._depth -= 1
            k += 1
        else:
            return k  # the destination goes on in the next piece
        self._token = None  # what is now at the destination is checked again
        return k

    def finish(self) -> str:
        held, self._hold = self._hold, ""
        out = self.feed(held, final=True) if held else ""
        self._token = None
        return out
