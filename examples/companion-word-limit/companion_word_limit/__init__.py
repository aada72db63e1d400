"""Word limit: an output sanitizer that ends the reply after ``max_words`` words.

When the limit is reached it calls ``turn.stop("word_limit")``: the engine closes the LLM
request at once (no more tokens are paid for) and the turn's ``done`` event carries
``finish_reason: "word_limit"``. Words are counted across streamed pieces, which may cut a
word anywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

from companion_engine import Sanitizer, StageOptions, Turn, hookimpl
from pydantic import Field

FINISH_REASON = "word_limit"


class WordLimit(Sanitizer):
    """Passes text through until ``max_words`` words, then stops the reply."""

    name: ClassVar[str] = "word_limit"
    description: ClassVar[str] = "end the reply after N words (example sanitizer)"

    class Options(StageOptions):
        max_words: int = Field(default=50, ge=1, le=100_000)

    options: Options

    async def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        limit = self.options.max_words
        words, in_word = 0, False  # this turn's own state: local variables, not self
        async for chunk in chunks:
            for i, ch in enumerate(chunk):
                if ch.isspace():
                    in_word = False
                elif not in_word:
                    in_word, words = True, words + 1
                    if words > limit:  # word limit+1 starts here: the reply ends before it
                        if head := chunk[:i].rstrip():
                            yield head
                        turn.stop(FINISH_REASON)
                        return
            yield chunk


@hookimpl
def register_sanitizers() -> list[type[Sanitizer]]:
    return [WordLimit]
