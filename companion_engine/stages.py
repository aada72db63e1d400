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

from pydantic import BaseModel, ConfigDict, Field

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
    #: True when ``stream`` always sets ``final=True`` on a sentence's last part: the session
    #: then sends each part the moment it arrives instead of holding it until the next one
    #: (or the stream's end) says whether it was the last.
    marks_final: ClassVar[bool] = False

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


@dataclass(slots=True)
class AudioInput:
    """Speech to recognise: 16-bit little-endian mono PCM at ``sample_rate``.

    The engine decodes whatever a client sent (WAV, Ogg/Opus, WebM/Opus, raw PCM16)
    into this before an STT backend sees it; built-in decoding always gives 16 kHz.
    """

    pcm: bytes
    sample_rate: int = 16000
    #: A language hint (ISO 639-1, ``en``) from the client or the profile; None: detect.
    language: str | None = None

    @property
    def duration_ms(self) -> int:
        return len(self.pcm) // 2 * 1000 // self.sample_rate if self.sample_rate else 0

    def wav(self) -> bytes:
        """The audio as a WAV file (what HTTP speech-to-text servers take)."""
        from companion_engine.speech.wav import pcm_to_wav

        return pcm_to_wav(self.pcm, self.sample_rate)


@dataclass(slots=True)
class Word:
    """One recognised word and when it was said (seconds from the audio's start)."""

    word: str
    start: float
    end: float
    probability: float | None = None


@dataclass(slots=True)
class Transcript:
    """What an STT backend heard: the text, its language and, if known, word times."""

    text: str
    #: ISO 639-1 code (``en``) where the backend says; None if unknown.
    language: str | None = None
    words: list[Word] = field(default_factory=list)
    #: Seconds of audio transcribed.
    duration: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``/api/transcribe`` and the ``transcript`` event."""
        out: dict[str, Any] = {"text": self.text, "language": self.language}
        if self.words:
            out["words"] = [{"word": w.word, "start": w.start, "end": w.end,
                             **({"probability": w.probability}
                                if w.probability is not None else {})} for w in self.words]
        if self.duration is not None:
            out["duration"] = self.duration
        return out


class STTBackend(Stage):
    """Speech to text: ``transcribe(audio, turn) -> Transcript`` for one utterance.

    Called for ``POST /api/transcribe``, a chat request with an ``audio`` part and each
    utterance the WebSocket's voice activity detector ends. Blocking work (a model in
    process) belongs on a thread; an HTTP backend uses ``engine.http`` or its own
    session. ``turn`` carries the profile, character and user name (useful as a prompt).
    """

    kind: ClassVar[str] = "stt_backend"
    #: False for a backend that never transcribes (``none``): speech input is off.
    listens: ClassVar[bool] = True

    async def transcribe(self, audio: AudioInput, turn: Turn) -> Transcript:
        raise NotImplementedError


class VADOptions(StageOptions):
    """Options every voice activity detector takes (a subclass may add more)."""

    #: Speech probability at or above which a frame is speech (below it minus 0.15: silence).
    threshold: float = Field(default=0.5, gt=0, lt=1)
    #: Speech shorter than this is a false start: it starts no utterance, interrupts nothing.
    min_speech_ms: int = Field(default=250, ge=0, le=5000)
    #: Silence that ends an utterance.
    min_silence_ms: int = Field(default=500, ge=30, le=10_000)
    #: Audio kept before the speech started and after it ended, for the transcriber.
    speech_pad_ms: int = Field(default=300, ge=0, le=2000)
    #: An utterance longer than this is ended (and transcribed) anyway.
    max_speech_s: float = Field(default=30, gt=0, le=300)


class VADBackend(Stage):
    """Voice activity detection: a speech probability per frame of 16 kHz PCM16.

    A backend scores frames; ``companion_engine.speech.vad.VADStream`` (``stream()``)
    cuts any incoming audio into frames, scores them on a worker thread (never on the
    event loop) and turns the probabilities into speech start/end events with the
    ``threshold``, ``min_speech_ms`` and ``min_silence_ms`` options. Per-stream model
    state comes from ``new_state()``: one instance serves every session at once.
    """

    kind: ClassVar[str] = "vad_backend"
    #: The rate frames are scored at.
    sample_rate: ClassVar[int] = 16000
    #: Samples in one scored frame (Silero: 512 = 32 ms; webrtcvad: 480 = 30 ms); a
    #: backend may set it per instance in ``setup``.
    frame_samples: int = 512

    class Options(VADOptions):
        pass

    options: VADOptions

    def new_state(self) -> Any:
        """Model state for one audio stream (Silero: its RNN state and context)."""
        return None

    def speech_probability(self, frame: bytes, state: Any) -> float:
        """0..1 for one frame of ``frame_samples`` PCM16 samples. Runs on a worker
        thread, in stream order; may update ``state``."""
        raise NotImplementedError

    def speech_probabilities(self, frames: bytes, state: Any) -> list[float]:
        """One probability per frame of ``frames`` (whole frames, in stream order). The
        stream hands a backend several frames at a time; override this when scoring them
        together is cheaper (Silero: one model run per block)."""
        fb = self.frame_samples * 2
        return [float(self.speech_probability(frames[i:i + fb], state))
                for i in range(0, len(frames) - fb + 1, fb)]

    def stream(self, options: VADOptions | None = None) -> Any:
        """A ``VADStream`` over this backend (``options`` override the profile's)."""
        from companion_engine.speech.vad import VADStream

        return VADStream(self, options or self.options)


#: Stage kind -> (base class, registration hook name).
STAGE_KINDS: dict[str, tuple[type[Stage], str]] = {
    "prompt_builder": (PromptBuilder, "register_prompt_builders"),
    "lorebook_injector": (LorebookInjector, "register_lorebook_injectors"),
    "sanitizer": (Sanitizer, "register_sanitizers"),
    "sentence_splitter": (SentenceSplitter, "register_sentence_splitters"),
    "tts_backend": (TTSBackend, "register_tts_backends"),
    "stt_backend": (STTBackend, "register_stt_backends"),
    "vad_backend": (VADBackend, "register_vad_backends"),
}
