"""Stand-in stages for plugin tests: a silent TTS backend and a whole-text splitter.

Load this module as a plugin (``companion_client(plugins=[stubs, your_module])``, or list
it in ``plugins=`` with your own) and name its stages in a test profile, so a test of your
sanitizer or prompt builder needs no real voice and sees one sentence per reply::

    from companion_engine.testing import stubs

    client = await companion_client(plugins=[stubs, my_plugin], profile={
        "speech": {"enabled": True, "splitter": "whole_text", "cleaners": [],
                   "tts": "silent"}})

``silent`` makes real (silent) WAV audio, 40 ms per character, honours ``turn.voice``
against its ``voices`` option (an unknown one is ``UnknownVoiceError``) and records
every call in ``SilentTTS.spoken`` as ``(voice, text)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from pydantic import Field

from companion_engine.errors import UnknownVoiceError
from companion_engine.hookspecs import hookimpl
from companion_engine.speech.wav import pcm_to_wav
from companion_engine.stages import Audio, SentenceSplitter, StageOptions, TTSBackend
from companion_engine.turn import Turn


class SilentTTS(TTSBackend):
    """Silence as long as the text would take to say; remembers what it was asked."""

    name: ClassVar[str] = "silent"
    description: ClassVar[str] = "silent WAV audio (for tests)"
    #: ``(voice, text)`` of every synthesis, across instances (cleared by tests).
    spoken: ClassVar[list[tuple[str, str]]] = []

    class Options(StageOptions):
        voice: str = "default"
        voices: list[str] = Field(default_factory=lambda: ["default", "other"])
        sample_rate: int = Field(default=16000, ge=8000, le=48000)
        ms_per_char: int = Field(default=40, ge=1, le=1000)

    options: Options

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        o = self.options
        voice = turn.voice or o.voice
        if voice not in o.voices:
            raise UnknownVoiceError(f"unknown voice {voice!r} (silent has {o.voices})")
        type(self).spoken.append((voice, text))
        duration_ms = len(text) * o.ms_per_char
        samples = o.sample_rate * duration_ms // 1000
        return Audio(data=pcm_to_wav(b"\0\0" * samples, o.sample_rate), format="wav",
                     sample_rate=o.sample_rate, duration_ms=duration_ms,
                     visemes=[{"time_ms": 0, "viseme": "sil", "phoneme": ""}])

    async def voices(self) -> list[dict[str, Any]]:
        return [{"name": v, "id": v, "language": "und"} for v in self.options.voices]


class WholeTextSplitter(SentenceSplitter):
    """The whole reply as one sentence, once it has ended."""

    name: ClassVar[str] = "whole_text"
    description: ClassVar[str] = "the whole reply as one sentence (for tests)"

    async def split(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        text = "".join([chunk async for chunk in chunks]).strip()
        if text:
            yield text


@hookimpl
def register_tts_backends() -> list[type[TTSBackend]]:
    return [SilentTTS]


@hookimpl
def register_sentence_splitters() -> list[type[SentenceSplitter]]:
    return [WholeTextSplitter]
