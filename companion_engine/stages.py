"""Base classes for pipeline stages: the contract between the engine and a plugin.

A stage class has a unique ``name``, a nested pydantic ``Options`` model
(``extra="forbid"``) and is built as ``Cls(options)`` when a profile's pipeline
is assembled. Each kind has one work method, called directly by the turn
runner (never through pluggy). Lifecycle: ``setup(engine)`` once after the
pipeline is built and before it serves a turn, ``aclose()`` once no running
turn uses it. One instance serves concurrent turns: keep per-turn state on the
``Turn``, never on ``self``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from companion_engine.engine import Engine
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

    async def setup(self, engine: Engine) -> None:
        """Acquire what the stage needs (models, the shared ``engine.http`` session,
        ``engine.plugin_config(name)``). Called once, on the event loop, before the
        pipeline serves its first turn; raising here rejects the profile (or reload)."""

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

    In ``output:`` it sees the reply's streamed pieces, cut anywhere (a word or a
    tag may arrive split). In ``speech.cleaners`` it sees one sentence per item;
    what it yields before asking for the next one is that sentence's speech
    (nothing: not spoken; several pieces: joined). ``turn.stop(reason)`` ends
    the reply.
    """

    kind: ClassVar[str] = "sanitizer"

    def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        raise NotImplementedError

    def extract_expressions(self, sentence: str) -> list[str]:
        """Expression tags in a displayed sentence (``[joy]`` -> ``"joy"``), for the
        audio events; a speech cleaner that knows tags overrides it."""
        return []


class SentenceSplitter(Stage):
    """Turns the reply's streamed pieces into sentences, as early as possible."""

    kind: ClassVar[str] = "sentence_splitter"

    def split(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        raise NotImplementedError


@dataclass(slots=True)
class Audio:
    """Synthesised speech for one sentence.

    ``visemes`` are ``{"time_ms", "viseme", "phoneme"}`` mouth shapes over time (the
    15 Oculus visemes, see ``companion_engine.speech.visemes``);
    ``duration_ms`` is read from the WAV header when a backend leaves it None.
    """

    data: bytes
    format: str = "wav"
    sample_rate: int = 22050
    visemes: list[dict[str, Any]] = field(default_factory=list)
    duration_ms: int | None = None
    #: In ``TTSBackend.stream``: this is the sentence's last part (lets the session mark it
    #: ``final`` at once instead of waiting for the stream to end).
    final: bool = False


class TTSBackend(Stage):
    """Speaks one sentence: ``synthesize(text, turn)`` in ``turn.voice`` if set."""

    kind: ClassVar[str] = "tts_backend"
    #: False for a backend that never makes audio (``none``): sentences are still split.
    speaks: ClassVar[bool] = True

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        """Raise ``companion_engine.errors.UnknownVoiceError`` for a voice it lacks."""
        raise NotImplementedError

    async def voices(self) -> list[dict[str, Any]]:
        """Voices this backend offers (``GET /api/tts/voices``): dicts with at least
        ``name``; ``language``, ``gender``, ``quality``, ``sample_rate`` where known."""
        return []

    async def stream(self, text: str, turn: Turn) -> AsyncIterator[Audio]:
        """The sentence's audio in parts as it is made (chunked audio); each part is a
        playable ``Audio`` of its own, the parts back to back are the sentence. The default
        is one part, the whole ``synthesize`` result."""
        audio = await self.synthesize(text, turn)
        audio.final = True
        yield audio


#: Stage kind -> (base class, registration hook name).
STAGE_KINDS: dict[str, tuple[type[Stage], str]] = {
    "prompt_builder": (PromptBuilder, "register_prompt_builders"),
    "lorebook_injector": (LorebookInjector, "register_lorebook_injectors"),
    "sanitizer": (Sanitizer, "register_sanitizers"),
    "sentence_splitter": (SentenceSplitter, "register_sentence_splitters"),
    "tts_backend": (TTSBackend, "register_tts_backends"),
}
