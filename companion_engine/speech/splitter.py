"""Streaming sentence splitting: text pieces in, speakable sentences out, as early as is safe.

``SentenceScanner`` is the synchronous core behind the ``sentence`` stage. It
scans each new piece once, jumping from one interesting character to the next,
and decides a boundary only when the text it needs has arrived: one visible
character after ``. ! ? …`` (a whole word after an ambiguous abbreviation). A
decision that needs more text waits for it, so the sentences never depend on
how the stream was chunked: fed token by token or whole, the output is the same.

Rules, in order:

- Never inside ``[tags]``, markdown links ``[label](url)``, inline code,
  fenced code blocks, ``<tags>`` and ``<x>...</x>`` elements.
- A newline ends a sentence at once.
- After ``. ! ? …`` (CJK ``。！？``) the closing quotes, brackets, repeated marks and
  emoji that follow join the sentence. Then the next visible character decides:
  lowercase or ``,;:`` continues the sentence (``e.g. this``, ``"Why?" she asked``,
  ``wait... what``); a character glued to a ``.`` continues it (3.14, $29.50,
  v1.0.0, file.txt, URLs, e-mails), except ``one.Two``; titles (Mr., Dr.) never end
  one; ``No. 5``-style abbreviations do not before a number; ambiguous ones
  (etc., U.S., a.m., Inc., initials) end one only before a word that usually
  starts a sentence (I, The, He, ...).
- The first piece of a reply may also end at ``, ; : —`` (CJK ``，、；：``) once it
  has ``first_fragment_min_chars`` (not inside 1,000, 12:30, http:, a,b).
- Later sentences shorter than ``min_chars`` are merged into the next; any
  sentence reaching ``max_chars`` is cut at its last clause mark, else its last
  space, else hard.

Lengths are "speech lengths": a wide (CJK) letter counts three, so the
defaults (20, 12) mean about 7 and 4 characters of Chinese or Japanese.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import regex

from companion_engine.speech.emoji import EMOTICON, is_emoji

#: Marks that end a sentence on their own: CJK, Devanagari danda, Arabic/Urdu, Ethiopic,
#: Myanmar, Armenian, Khmer; never followed by a continuation that changes the decision.
HARD_TERMINALS = frozenset("。！？｡।॥؟۔።။։។៕")
TERMINALS = frozenset(".!?…‽⁇⁈⁉") | HARD_TERMINALS
CJK_TERMINALS = HARD_TERMINALS
CLAUSE_MARKS = frozenset(",;:—，、；：")
#: Clause marks that need a space (or end) after them to count.
ASCII_CLAUSE = frozenset(",;:")
CLOSERS = frozenset("\"')]}”’»›」』》）】〉*")
#: Closers French typography sets off with a space: ``« Bonjour ! » dit-il``.
SPACED_CLOSERS = frozenset("»›")
#: Spaces French typography uses before ``! ? ; :`` and inside guillemets.
_FRENCH_SPACES = " \u00a0\u202f"
OPENERS = frozenset("\"'([{“‘«‹「『《（【〈*_")
#: Glued to a ``.``, these continue the token (URLs, e-mails, paths, versions).
CONTINUES_TOKEN = frozenset("/:-@_%#\\&=?~+$")
VOID_ELEMENTS = frozenset(
    "area base br col embed hr img input link meta source track wbr".split())

#: Titles and Latin abbreviations that never end a sentence.
NEVER_FINAL = frozenset("""
mr mrs ms mx dr prof rev hon gen col capt cpt lt sgt maj adm cmdr gov sen rep pres supt
insp det fr br messrs mme mlle mt st ft e.g i.e cf viz vs v approx ca al ibid resp
bzw vgl ggf evtl inkl zzgl bspw sog hrsg sra srta dra ud uds
""".split())
#: Abbreviations that do not end a sentence before a number (No. 5, Fig. 3, p. 12).
BEFORE_NUMBER = frozenset("no nos nr fig figs vol vols p pp ch chap sec art op ed eq par".split())
#: Abbreviations that may end a sentence: only before a typical sentence starter.
AMBIGUOUS = frozenset("""
etc inc ltd co corp llc plc jr sr esq bros dept univ est min max hr hrs sec mins secs
jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun
a.m p.m u.s u.k u.n e.u ph.d b.a m.a b.sc m.sc d.c l.a n.y a.d b.c
usw str mio mrd jh tel
""".split())
#: Words that usually start a sentence (decide the ambiguous abbreviations).
STARTERS = frozenset("""
i i'm i've i'll i'd the he she it we they you this that these those there then but and so
however also now my our your his her its their what when where why how who if in on at as
after before yes no oh well let let's please thanks thank maybe perhaps sure okay ok hi
hello hey do does did is are was were can could would should will don't it's that's
there's what's here here's meanwhile still yet anyway besides finally first next
ich du er sie es wir ihr das der die dann aber und ja nein danke je tu il elle nous vous
ils elles le la les mais et oui non merci yo él ella pero sí gracias el los las
я ты он она мы вы они но и да нет спасибо это
""".split())
#: Month names after a day number: ``am 3. Oktober`` is a date, not a sentence end.
MONTHS = frozenset("""
januar jänner februar märz april mai juni juli august september oktober november dezember
january february march may june july october december
""".split())

_SPECIAL = re.compile(r"[.!?…‽⁇⁈⁉。！？｡।॥؟۔።။։។៕\n,;:—，、；：`\[\]()<>]"
                      r"|(?<=[\u0e00-\u0eff]) ")
#: Thai and Lao write no sentence marks: a space between two of their letters ends a phrase.
_SPACE_SCRIPT = re.compile(r"[\u0e00-\u0eff]")
_OPEN_TAG = re.compile(r"<([A-Za-z][\w:-]*)(?:\s[^<>]*)?>", re.S)
_CLOSE_TAG = re.compile(r"</([A-Za-z][\w:-]*)\s*>")
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")
_WORD = re.compile(r"[\w'’-]*")
_CUT_CLAUSE = re.compile(r"[,;:—，、；：][\"')\]}”’»›」』》）】〉]*(?=\s)|[，、；：—]")

NEED_MORE = -1
#: Clause marks that may end the first fragment without waiting for the next character
#: (when no number precedes them and no quote or bracket is open).
_NO_LOOKAHEAD = frozenset(",—，、；")  # not ";": it may start ;) or ;-)
_ENTITY_END = re.compile(r"&#?\w{1,10};$")
_EMOTICON = regex.compile(EMOTICON)
_WS = re.compile(r"\s")
_PAIRS = (("(", ")"), ("[", "]"), ("“", "”"), ("「", "」"), ("『", "』"), ("«", "»"),
          ("（", "）"), ("‘", "’"))


def _unbalanced(text: str) -> bool:
    """An opening quote or bracket in ``text`` is still open (its closer may come next)."""
    if text.count('"') % 2:
        return True
    return any(text.count(a) > text.count(b) for a, b in _PAIRS)


def speech_length(text: str) -> int:
    """Length that weights wide (CJK) letters three times, like the time to say them."""
    wide = sum(1 for ch in text if ord(ch) > 0x2E7F and unicodedata.east_asian_width(ch) in "WF"
               and unicodedata.category(ch).startswith("L"))
    return len(text) + 2 * wide


def _is_cjk(ch: str) -> bool:
    return ord(ch) > 0x2E7F and unicodedata.east_asian_width(ch) in "WF" and not is_emoji(ch)


@dataclass(frozen=True, slots=True)
class SplitOptions:
    fast_first_fragment: bool = True
    first_fragment_min_chars: int = 20
    min_chars: int = 12
    max_chars: int = 280


class SentenceScanner:
    """Incremental sentence splitter; ``feed`` pieces, then ``finish``."""

    _KEEP = 256  # characters kept before ``start`` for look-behind after trimming

    def __init__(self, options: SplitOptions | None = None) -> None:
        self.o = options or SplitOptions()
        self.buf = ""
        self.start = 0  # start of the pending sentence in buf
        self.pos = 0  # next index to scan
        self.count = 0  # sentences emitted
        self._trimmed = False
        self._out: list[str] = []
        # regions
        self.fence = False
        self.code = False
        self.bracket = False
        self.link_depth = 0
        self.angle_at = -1  # index of the "<" of an open tag, else -1
        self.element: str | None = None
        self._bracket_closed_at = -2

    # --- public -----------------------------------------------------------------------------

    def feed(self, text: str) -> list[str]:
        """Add a piece of the stream; return the sentences it completed."""
        if text:
            self.buf += text
            self._scan(final=False)
        return self._take()

    def finish(self) -> list[str]:
        """End of stream: decide what was waiting and flush the rest."""
        self._scan(final=True)
        rest = self.buf[self.start:].strip()
        if rest:
            self._out.append(rest)
            self.count += 1
        self.buf, self.start, self.pos = "", 0, 0
        return self._take()

    def _take(self) -> list[str]:
        out, self._out = self._out, []
        return out

    # --- scanning ---------------------------------------------------------------------------

    def _scan(self, final: bool) -> None:
        buf = self.buf
        max_chars = self.o.max_chars
        while True:
            if self.start - self._KEEP > 4 * self._KEEP:
                self._trim()
                buf = self.buf
            m = _SPECIAL.search(buf, self.pos)
            nxt = m.start() if m else len(buf)
            if nxt - self.start > max_chars:
                self._cut_long()
                self.pos = max(self.pos, self.start)
                buf = self.buf
                continue
            if m is None:
                self.pos = len(buf)
                return
            new_pos = self._step(nxt, buf[nxt], final)
            if new_pos == NEED_MORE:
                self.pos = nxt
                return
            self.pos = new_pos

    def _step(self, i: int, c: str, final: bool) -> int:
        buf = self.buf
        if self.fence:
            if c == "`" and self._at_line_start(i):
                run = self._run(i, "`")
                if i + run == len(buf) and not final:
                    return NEED_MORE
                if run >= 3:
                    self.fence = False
                return i + run
            return i + 1
        if self.code:
            if c == "`":
                self.code = False
            elif c == "\n":
                self.code = False
                return self._newline(i)
            return i + 1
        if self.angle_at >= 0:
            if c == ">":
                self._close_angle(i)
            elif c == "\n":
                self.angle_at = -1
                return self._newline(i) if self.element is None else i + 1
            return i + 1
        if self.bracket:
            if c == "]":
                self.bracket = False
                self._bracket_closed_at = i
            elif c == "\n":
                self.bracket = False
                return self._newline(i)
            return i + 1
        if self.link_depth:
            if c == "(":
                self.link_depth += 1
            elif c == ")":
                self.link_depth -= 1
            elif c == "\n":
                self.link_depth = 0
                return self._newline(i)
            return i + 1
        if self.element is not None:
            return self._maybe_tag(i, final)
        if c == "`":
            run = self._run(i, "`")
            if i + run == len(buf) and not final:
                return NEED_MORE
            after = buf[i + run] if i + run < len(buf) else ""
            if run == 1 and (not after or after.isspace() or after in ")）"):
                return i + 1  # a stray mark, or the eye of a kaomoji: (´・ω・`)
            if run >= 3 and self._at_line_start(i):
                self.fence = True
            else:
                self.code = True
            return i + run
        if c == "[":
            self.bracket = True
            return i + 1
        if c == "(":
            if self._bracket_closed_at == i - 1:
                self.link_depth = 1
            return i + 1
        if c == "<":
            return self._maybe_tag(i, final)
        if c == "\n":
            return self._newline(i)
        if c in TERMINALS:
            return self._terminal(i, final)
        if c == " ":
            return self._script_space(i, final)
        if c in CLAUSE_MARKS and self.count == 0 and self.o.fast_first_fragment:
            return self._clause(i, final)
        return i + 1

    # --- regions ----------------------------------------------------------------------------

    def _run(self, i: int, ch: str) -> int:
        j = i
        while j < len(self.buf) and self.buf[j] == ch:
            j += 1
        return j - i

    def _at_line_start(self, i: int) -> bool:
        j = i - 1
        while j >= 0 and self.buf[j] in " \t":
            j -= 1
        return (j < 0 and not self._trimmed) or (j >= 0 and self.buf[j] == "\n")

    def _maybe_tag(self, i: int, final: bool) -> int:
        if self.buf[i] != "<":
            return i + 1
        if i + 1 >= len(self.buf):
            return i + 1 if final else NEED_MORE
        nxt = self.buf[i + 1]
        if nxt.isascii() and (nxt.isalpha() or nxt in "/!?"):
            self.angle_at = i
        return i + 1

    def _close_angle(self, i: int) -> None:
        tag = self.buf[self.angle_at : i + 1]
        self.angle_at = -1
        if self.element is None:
            m = _OPEN_TAG.fullmatch(tag)
            if m and not tag.endswith("/>") and m.group(1).lower() not in VOID_ELEMENTS:
                self.element = m.group(1).lower()
        else:
            m = _CLOSE_TAG.fullmatch(tag)
            if m and m.group(1).lower() == self.element:
                self.element = None

    # --- boundaries -------------------------------------------------------------------------

    def _newline(self, i: int) -> int:
        self._boundary(i, i + 1)
        return i + 1

    def _script_space(self, i: int, final: bool) -> int:
        """A space after a Thai or Lao letter: a phrase ends when another such letter follows."""
        if i + 1 >= len(self.buf):
            return i + 1 if final else NEED_MORE
        if _SPACE_SCRIPT.match(self.buf[i + 1]):
            self._boundary(i, i + 1)
        return i + 1

    def _terminal(self, i: int, final: bool) -> int:
        buf, n = self.buf, len(self.buf)
        if buf[i] in "。｡" and i > 0 and (buf[i - 1] in OPENERS or buf[i - 1] in "(（"
                                         or unicodedata.category(buf[i - 1])[0] == "S"):
            return i + 1  # an eye of a kaomoji: (。◕‿◕。)
        j = i
        while True:
            while j < n and (buf[j] in TERMINALS or buf[j] in CLOSERS or buf[j] == "«"):
                j += 1  # glued « closes German »quotes«
            s = j
            while s < n and buf[s] in _FRENCH_SPACES:
                s += 1
            if s > j and s < n and buf[s] in SPACED_CLOSERS:  # « Bonjour ! » dit-il
                if s + 1 >= n and not final:
                    return NEED_MORE
                if s + 1 >= n or not buf[s + 1].isalnum():  # not German »opening
                    j = s + 1
                    continue
            break
        if j == n and not final:
            return NEED_MORE
        end = j
        k = j
        while True:  # absorb emoji and emoticons after the mark ("Great! 😊 Let's go")
            while k < n and buf[k] in " \t":
                k += 1
            if k < n and is_emoji(buf[k]):
                while k < n and (is_emoji(buf[k]) or buf[k] in CLOSERS):
                    k += 1
                end = k
                continue
            if k < n:
                e = self._emoticon(k, final)
                if e == NEED_MORE:
                    return NEED_MORE
                if e:
                    end = k = e
                    continue
            break
        while k < n and buf[k].isspace():
            k += 1
        if k == n and not final:
            return NEED_MORE
        split = self._decide(i, j, k, final)
        if split == NEED_MORE:
            return NEED_MORE
        if split:
            self._boundary(end, k)
            return k
        return j

    def _emoticon(self, k: int, final: bool) -> int:
        """End of the emoticon or kaomoji token at ``k`` (``:)``, ``^_^``), 0, or NEED_MORE."""
        buf = self.buf
        if buf[k] not in ":;=^(（<-_xXoOTt>¯":
            return 0
        m = _WS.search(buf, k)
        end = m.start() if m else len(buf)
        token = buf[k:end]
        if len(token) > 24:
            return 0
        if m is None and not final:
            return NEED_MORE if _EMOTICON.fullmatch(token, partial=True) else 0
        return end if _EMOTICON.fullmatch(token) else 0

    def _decide(self, i: int, j: int, k: int, final: bool) -> int:
        """1 to end the sentence at the marks ``buf[i:j]``, 0 not to, or NEED_MORE."""
        buf, n = self.buf, len(self.buf)
        if k >= n or "\n" in buf[j:k]:
            return 1
        marks = [ch for ch in buf[i:j] if ch in TERMINALS]
        if any(ch in CJK_TERMINALS for ch in marks):
            # 「本当？」と彼女は聞いた: a quoted question followed by the quotative particle.
            return 0 if buf[j - 1] in "」』" and k == j and buf[k] in "とっ" else 1
        last = marks[-1]
        nxt = buf[k]
        glued = k == j
        if glued:
            if _is_cjk(nxt):
                return 1
            if last in ".…":
                if nxt.isdigit() or nxt.islower() or nxt in CONTINUES_TOKEN:
                    return 0
                if nxt.isupper() and len(marks) == 1 and j == i + 1:
                    word = self._word_before(i)
                    return 1 if len(word) >= 2 and word.isalpha() and word.islower() else 0
                return 1
            if nxt.isalnum() and not nxt.isupper():
                return 0
            return 0 if nxt in "=&/" else 1
        if nxt.islower() or nxt in ",;:":
            return 0
        if last == "." and len(marks) == 1 and j == i + 1:
            return self._after_abbreviation(i, k, final)
        return 1

    def _word_before(self, i: int) -> str:
        j = i
        while j > 0 and not self.buf[j - 1].isspace() and self.buf[j - 1] not in OPENERS:
            j -= 1
        return self.buf[j:i]

    def _after_abbreviation(self, i: int, k: int, final: bool) -> int:
        word = self._word_before(i)
        lower = word.lower()
        nxt = self.buf[k]
        if not word:
            return 1
        if lower in NEVER_FINAL:
            return 0
        if lower in BEFORE_NUMBER:
            return 0 if nxt.isdigit() or nxt == "#" else 1
        if word.isdigit() and self._at_line_start(i - len(word)):
            return 0  # "1. First item"
        n = len(self.buf)
        if len(word) == 1 and word.isalpha():
            # A chain of one-letter abbreviations: z. B., d. h., т. е., J. R. R.
            if k + 1 >= n and not final:
                return NEED_MORE
            if nxt.isalpha() and k + 1 < n and self.buf[k + 1] == ".":
                return 0
        if word.isdigit() and int(word) <= 31:  # am 3. Oktober
            m = _WORD.match(self.buf, k)
            assert m is not None
            if m.end() == n and not final:
                return NEED_MORE
            if m.group().lower() in MONTHS:
                return 0
        if lower in AMBIGUOUS or _DOTTED.fullmatch(lower) or (len(word) == 1 and word.isupper()):
            m = _WORD.match(self.buf, k)
            assert m is not None
            if m.end() == len(self.buf) and not final:
                return NEED_MORE
            return 1 if m.group().lower().replace("’", "'") in STARTERS else 0
        return 1

    def _clause(self, i: int, final: bool) -> int:
        buf, n = self.buf, len(self.buf)
        if speech_length(buf[self.start : i + 1].strip()) < self.o.first_fragment_min_chars:
            return i + 1
        c = buf[i]
        if _ENTITY_END.search(buf, max(self.start, i - 12), i + 1):
            return i + 1  # &amp;  &#x27;
        if c in _NO_LOOKAHEAD and not (i > 0 and buf[i - 1].isdigit()) \
                and not _unbalanced(buf[self.start : i]):
            # No number before it, no quote or bracket to close: decided without lookahead.
            self._boundary(i + 1, i + 1)
            return i + 1
        if i + 1 >= n and not final:
            return NEED_MORE
        nxt = buf[i + 1] if i + 1 < n else ""
        if c in ASCII_CLAUSE:
            if nxt and not (nxt.isspace() or nxt in CLOSERS):
                return i + 1  # 1,000  12:30  http:  a,b  &amp;
            if i > 0 and buf[i - 1] in TERMINALS:
                return i + 1  # "Why?," she asked
        end = i + 1
        while end < n and buf[end] in CLOSERS:
            end += 1
        if end == n and not final:
            return NEED_MORE
        self._boundary(end, end)
        return end

    def _boundary(self, end: int, next_start: int, *, forced: bool = False) -> None:
        text = self.buf[self.start : end].strip()
        if not text:
            self.start = next_start
            return
        if forced or self.count == 0 or speech_length(text) >= self.o.min_chars:
            self._out.append(text)
            self.count += 1
            self.start = next_start

    def _cut_long(self) -> None:
        """The pending sentence passed ``max_chars``: cut at a clause mark in its second half,
        else at its last space, else hard."""
        limit = self.start + self.o.max_chars
        window = self.buf[self.start : limit]
        end = 0
        for m in _CUT_CLAUSE.finditer(window, len(window) // 2):
            end = m.end()
        if end == 0:
            space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
            end = space if space > 0 else len(window)
        self._boundary(self.start + end, self.start + end, forced=True)

    def _trim(self) -> None:
        """Drop emitted text (keeping a little for look-behind) so long replies stay linear."""
        cut = self.start - self._KEEP
        self.buf = self.buf[cut:]
        self.start -= cut
        self.pos -= cut
        if self.angle_at >= 0:
            self.angle_at -= cut
        self._bracket_closed_at -= cut
        self._trimmed = True
