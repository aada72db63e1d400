"""Built-in sentence splitter: ``sentence`` (see ``companion_engine.speech.splitter``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, model_validator

from companion_engine import hookimpl
from companion_engine.speech.splitter import SentenceScanner, SplitOptions
from companion_engine.stages import SentenceSplitter, StageOptions

if TYPE_CHECKING:
    from companion_engine.turn import Turn


class Sentence(SentenceSplitter):
    """Rule-based streaming splitter with a fast first fragment."""

    name: ClassVar[str] = "sentence"
    description: ClassVar[str] = "streaming sentence splitter with a fast first fragment"

    class Options(StageOptions):
        #: Let the first piece of a reply end at a clause mark (, ; : —).
        fast_first_fragment: bool = True
        first_fragment_min_chars: int = Field(default=20, ge=1, le=1000)
        #: Later sentences shorter than this merge into the next.
        min_chars: int = Field(default=12, ge=0, le=1000)
        #: Longer sentences are cut at a clause mark or space.
        max_chars: int = Field(default=280, ge=20, le=10000)

        @model_validator(mode="after")
        def _order(self) -> Sentence.Options:
            if self.min_chars > self.max_chars:
                raise ValueError("min_chars must not exceed max_chars")
            return self

    options: Options

    def split_options(self) -> SplitOptions:
        return SplitOptions(**self.options.model_dump())

    async def split(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        scanner = SentenceScanner(self.split_options())
        async for chunk in chunks:
            for sentence in scanner.feed(chunk):
                yield sentence
        for sentence in scanner.finish():
            yield sentence


@hookimpl
def register_sentence_splitters() -> list[type[SentenceSplitter]]:
    return [Sentence]
