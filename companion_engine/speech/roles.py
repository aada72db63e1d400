"""Who is speaking: a reply's sentences cut into dialogue and narration, for voices per role.

Roleplay replies mix what a character says with what happens: ``"Hi," she said.
*She steps aside.* "Come in."``. ``RoleSplitter`` cuts each sentence into
segments and tells them apart:

- inside double quotes (``"…"``, ``“…”``, ``„…“``, ``«…»``, ``「…」``, ``『…』``) is
  **dialogue**;
- inside single ``*asterisks*`` (an action; ``**bold**`` is not one) is **narration**;
- text outside both is **narration** once the reply has used quotation marks
  (prose style: the narrator speaks between quotes), and **dialogue** before that
  (a plain reply, or the asterisk style where actions are starred and speech is
  bare).

Quotes and actions may span sentences; the splitter keeps that state for the
whole reply, so one instance serves one turn. The quote and asterisk marks
themselves are dropped from the segments (they are not spoken).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["dialogue", "narration"]

#: Opening quote -> the closers that end it.
_QUOTES = {'"': '"', "“": "”", "„": "“”", "«": "»", "「": "」", "『": "』", "»": "«"}


@dataclass(frozen=True, slots=True)
class Segment:
    role: Role
    text: str


class RoleSplitter:
    """Cuts sentences into dialogue and narration segments, keeping state across a reply."""

    def __init__(self) -> None:
        self.quote: str | None = None  # the closers of the open quote
        self.action = False
        self.prose = False  # the reply has used quotation marks

    def split(self, sentence: str) -> list[Segment]:
        """The sentence's segments in order; empty ones are left out."""
        out: list[tuple[str, list[str]]] = []  # ("quote" | "action" | "plain", chars)
        n = len(sentence)

        def add(kind: str, ch: str) -> None:
            if out and out[-1][0] == kind:
                out[-1][1].append(ch)
            else:
                out.append((kind, [ch]))

        for i, ch in enumerate(sentence):
            before = sentence[i - 1] if i else " "
            after = sentence[i + 1] if i + 1 < n else " "
            if self.quote is not None:
                if ch in self.quote and (ch != '"' or not after.isalnum() or before != " "):
                    self.quote = None
                    continue
                if ch == "*" and after != "*" and before != "*":
                    continue  # emphasis inside a quote: still dialogue
                add("quote", ch)
                continue
            if ch == "*" and after != "*" and before != "*":
                if self.action and not before.isspace():
                    self.action = False
                    continue
                if not self.action and not after.isspace():
                    self.action = True
                    continue
            if not self.action and ch in _QUOTES and not (ch == "»" and not after.isalnum()):
                if ch == '"' and before.isalnum() and not after.isalnum():
                    add("plain", ch)  # a closing mark with no opener (12" vinyl)
                    continue
                self.quote = _QUOTES[ch]
                self.prose = True
                continue
            add("action" if self.action else "plain", ch)
        segments: list[Segment] = []
        plain_role: Role = "narration" if self.prose else "dialogue"
        for kind, chars in out:
            raw = "".join(chars).strip()
            if not any(c.isalnum() for c in raw):
                # Only punctuation (the "." after an *action*): it ends the piece before it.
                if raw and segments and raw[0] not in ",;:—-–":
                    segments[-1] = Segment(segments[-1].role, segments[-1].text + raw)
                continue
            text = raw.lstrip(",;:—-– ").strip()
            role: Role = "dialogue" if kind == "quote" else \
                "narration" if kind == "action" else plain_role
            if segments and segments[-1].role == role:
                segments[-1] = Segment(role, f"{segments[-1].text} {text}")
            else:
                segments.append(Segment(role, text))
        return segments
