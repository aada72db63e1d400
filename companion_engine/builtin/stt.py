"""Built-in speech-to-text backends: OpenAI-compatible HTTP, faster-whisper in process, none."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from companion_engine import hookimpl
from companion_engine.speech import whisper
from companion_engine.speech.http_stt import OpenAISTT
from companion_engine.stages import AudioInput, StageOptions, STTBackend, Transcript

if TYPE_CHECKING:
    from companion_engine.engine import Engine
    from companion_engine.turn import Turn


class NoSTT(STTBackend):
    """Speech input off: text chat works, ``/api/transcribe`` answers 409."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "no speech input"
    listens: ClassVar[bool] = False

    async def transcribe(self, audio: AudioInput, turn: Turn) -> Transcript:
        raise RuntimeError("speech.stt is 'none': this profile does not listen")


class FasterWhisperSTT(STTBackend):
    """Whisper inside the server process (faster-whisper, CTranslate2), on its own thread."""

    name: ClassVar[str] = "faster_whisper"
    description: ClassVar[str] = "Whisper in process (faster-whisper; extra [whisper])"

    class Options(StageOptions):
        #: A model folder (CTranslate2 format) or a name (``tiny.en``, ``base``, ``small``...).
        model: str = Field(default="base", min_length=1)
        #: Let faster-whisper fetch a named model that is not in the local cache.
        download: bool = False
        device: Literal["cpu", "cuda", "auto"] = "cpu"
        compute_type: str = "int8"
        #: Threads one transcription uses (0: CTranslate2's default).
        cpu_threads: int = Field(default=0, ge=0, le=64)
        beam_size: int = Field(default=1, ge=1, le=10)
        #: ISO 639-1 code; default: the profile's ``speech.language``, else detected.
        language: str | None = None
        word_timestamps: bool = True
        prompt: str | None = Field(default=None, max_length=2000)
        #: faster-whisper's own Silero pass inside the utterance (the WebSocket already cut it).
        vad_filter: bool = False

    options: Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._model: whisper.WhisperModel | None = None

    async def setup(self, engine: Engine) -> None:
        o = self.options
        key = whisper.ModelKey(o.model, o.device, o.compute_type, o.cpu_threads, o.download)
        self._model = await asyncio.to_thread(whisper.load, key)

    async def transcribe(self, audio: AudioInput, turn: Turn) -> Transcript:
        if self._model is None:
            raise RuntimeError("the Whisper model is not loaded (setup() was not run)")
        o = self.options
        language = o.language or audio.language or turn.profile.speech.language
        return await self._model.transcribe(
            audio, language=language.split("-")[0] if language else None,
            beam_size=o.beam_size, word_timestamps=o.word_timestamps, prompt=o.prompt,
            vad_filter=o.vad_filter)


@hookimpl
def register_stt_backends() -> list[type[STTBackend]]:
    return [OpenAISTT, FasterWhisperSTT, NoSTT]
