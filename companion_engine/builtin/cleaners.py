"""Built-in speech cleaners: ``expressions``, ``actions``, ``markdown``, ``emoji``, ``normalize``.

Each sees one display sentence per item and yields exactly one speech string
per sentence (empty: nothing to say). They only change what is *spoken*; the
text shown to the user is never touched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from companion_engine import hookimpl
from companion_engine.speech.cleaners import ActionFilter, MarkdownFilter, extract_expressions
from companion_engine.speech.emoji import strip_emoji_and_emoticons
from companion_engine.speech.normalize import normalize_en
from companion_engine.stages import Sanitizer, StageOptions

if TYPE_CHECKING:
    from companion_engine.turn import Turn


class SentenceCleaner(Sanitizer):
    """A cleaner that maps each sentence through a per-turn function."""

    def make_filter(self) -> Callable[[str], str]:
        raise NotImplementedError

    async def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        clean = self.make_filter()
        async for sentence in chunks:
            yield clean(sentence)


class Expressions(SentenceCleaner):
    """Takes ``[joy]``-style tags out of speech; the session reports them as ``expression``."""

    name: ClassVar[str] = "expressions"
    description: ClassVar[str] = "extract [joy]-style expression tags instead of speaking them"

    class Options(StageOptions):
        #: Expression names the client knows; empty means every short bracket tag.
        names: list[str] = Field(default_factory=list)
        #: Also keep other bracket tags out of speech (not reported).
        strip_unknown: bool = True

    options: Options

    def extract_expressions(self, sentence: str) -> list[str]:
        """The tags of one sentence (``SpeechSession.expressions`` uses this)."""
        return extract_expressions(sentence, self.options.names, self.options.strip_unknown)[1]

    def make_filter(self) -> Callable[[str], str]:
        o = self.options
        return lambda s: extract_expressions(s, o.names, o.strip_unknown)[0]


class Actions(SentenceCleaner):
    """Drops ``*waves*`` roleplay actions; ``**bold**`` is kept (run before ``markdown``)."""

    name: ClassVar[str] = "actions"
    description: ClassVar[str] = "drop *roleplay actions* from speech, keep **bold** words"

    class Options(StageOptions):
        #: Speak the action's words instead of dropping them (only the asterisks go).
        keep_text: bool = False

    options: Options

    def make_filter(self) -> Callable[[str], str]:
        return ActionFilter(self.options.keep_text)


class Markdown(SentenceCleaner):
    """Markdown read as plain speech: emphasis as words, no code blocks, link labels, no URLs."""

    name: ClassVar[str] = "markdown"
    description: ClassVar[str] = "speak markdown as plain text (code blocks and URLs dropped)"

    class Options(StageOptions):
        #: Said once in place of each code block (empty: say nothing).
        code_placeholder: str = Field(default="", max_length=100)

    options: Options

    def make_filter(self) -> Callable[[str], str]:
        return MarkdownFilter(self.options.code_placeholder)


class Emoji(SentenceCleaner):
    """Removes emoji, emoticons and kaomoji so they are not read out by name."""

    name: ClassVar[str] = "emoji"
    description: ClassVar[str] = "remove emoji, :) emoticons and (^_^) kaomoji from speech"

    def make_filter(self) -> Callable[[str], str]:
        return strip_emoji_and_emoticons


class Normalize(SentenceCleaner):
    """English numbers, money, times, dates and units as words ("$29.50" -> "twenty-nine
    dollars fifty"). For another language, register a cleaner of your own and list it
    instead (see docs/voice.md)."""

    name: ClassVar[str] = "normalize"
    description: ClassVar[str] = "say numbers, money, times, dates and units as English words"

    def make_filter(self) -> Callable[[str], str]:
        return normalize_en


@hookimpl
def register_sanitizers() -> list[type[Sanitizer]]:
    return [Expressions, Actions, Markdown, Emoji, Normalize]
