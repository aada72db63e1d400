"""Base classes for pipeline stages.

A stage class has a unique ``name``, a nested pydantic ``Options`` model
(``extra="forbid"``) and is built as ``Cls(options)`` when a profile's pipeline
is assembled. Each kind has exactly one work method, called directly by the
turn runner (never through pluggy).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from companion_engine.turn import Turn


class StageOptions(BaseModel):
    """Base for every stage's ``Options``: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Stage:
    """Common ground of all stages."""

    name: ClassVar[str]
    kind: ClassVar[str]
    #: One line shown by ``companion plugins`` and in error messages.
    description: ClassVar[str] = ""

    class Options(StageOptions):
        pass

    def __init__(self, options: StageOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    async def aclose(self) -> None:
        """Release resources; called once no running turn uses this instance."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class PromptBuilder(Stage):
    """Adds to ``turn.messages``."""

    kind: ClassVar[str] = "prompt_builder"

    async def build(self, turn: Turn) -> None:
        raise NotImplementedError


class LorebookInjector(Stage):
    """Activates lore for the turn and places it (``turn.slots``, ``depth_injections``)."""

    kind: ClassVar[str] = "lorebook_injector"

    async def inject(self, turn: Turn) -> None:
        raise NotImplementedError


class Sanitizer(Stage):
    """Transforms a text stream: an async generator, str in and str out.

    In ``output:`` it sees the reply's streamed pieces. In ``speech.cleaners`` it
    sees one sentence per item; what it yields before asking for the next one is
    that sentence's speech (nothing: not spoken; several pieces: joined).
    """

    kind: ClassVar[str] = "sanitizer"

    def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        raise NotImplementedError


class SentenceSplitter(Stage):
    """Turns the reply's streamed pieces into sentences, as early as possible."""

    kind: ClassVar[str] = "sentence_splitter"

    def split(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        raise NotImplementedError


@dataclass(slots=True)
class Audio:
    """Synthesised speech for one sentence."""

    data: bytes
    format: str = "wav"
    sample_rate: int = 22050
    visemes: list[dict[str, Any]] = field(default_factory=list)
    duration_ms: int | None = None


class TTSBackend(Stage):
    """Speaks one sentence."""

    kind: ClassVar[str] = "tts_backend"

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        raise NotImplementedError

    async def voices(self) -> list[dict[str, Any]]:
        """Voices this backend offers (``GET /api/tts/voices``)."""
        return []


#: Stage kind -> (base class, registration hook name).
STAGE_KINDS: dict[str, tuple[type[Stage], str]] = {
    "prompt_builder": (PromptBuilder, "register_prompt_builders"),
    "lorebook_injector": (LorebookInjector, "register_lorebook_injectors"),
    "sanitizer": (Sanitizer, "register_sanitizers"),
    "sentence_splitter": (SentenceSplitter, "register_sentence_splitters"),
    "tts_backend": (TTSBackend, "register_tts_backends"),
}
