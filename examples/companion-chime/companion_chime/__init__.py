"""Chime: a TTS backend that plays a chord per sentence, one chord per voice.

It shows the TTS side of the plugin API: the voice a client asked for (``turn.voice``),
``voices()`` for ``GET /api/tts/voices``, ``UnknownVoiceError`` for a voice it lacks,
``speaks`` (``mute: true`` turns it into a text-only backend: the engine then makes no audio
events and ``POST /api/tts`` answers 409), and ``setup``/``aclose`` to build shared data once
per pipeline (the chord tables, here).
"""

from __future__ import annotations

import math
import struct
from typing import Any, ClassVar

from companion_engine import Audio, StageOptions, TTSBackend, Turn, UnknownVoiceError, hookimpl
from pydantic import Field

#: Voice name -> the chord's frequencies in Hz.
CHORDS: dict[str, tuple[float, ...]] = {
    "major": (261.63, 329.63, 392.00),
    "minor": (261.63, 311.13, 392.00),
    "fifth": (196.00, 293.66),
}


def wav(pcm: bytes, sample_rate: int) -> bytes:
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1,
                       1, sample_rate, sample_rate * 2, 2, 16, b"data", len(pcm)) + pcm


class Chime(TTSBackend):
    """A chord per sentence, as long as the sentence would take to say."""

    name: ClassVar[str] = "chime"
    description: ClassVar[str] = "a chord per sentence (example TTS backend)"

    class Options(StageOptions):
        voice: str = "major"
        #: Text only: the backend says it does not speak.
        mute: bool = False
        sample_rate: int = Field(default=16000, ge=8000, le=48000)
        ms_per_char: int = Field(default=25, ge=1, le=500)

    options: Options

    @property  # type: ignore[override]
    def speaks(self) -> bool:
        return not self.options.mute

    async def setup(self, engine: Any) -> None:
        rate = self.options.sample_rate
        # One second of each chord, computed once per pipeline and shared by every turn.
        self.tables = {name: [sum(math.sin(2 * math.pi * f * i / rate) for f in freqs)
                              / len(freqs) for i in range(rate)]
                       for name, freqs in CHORDS.items()}

    async def aclose(self) -> None:
        self.tables = {}

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        voice = turn.voice or self.options.voice
        if voice not in CHORDS:
            raise UnknownVoiceError(f"chime has no voice {voice!r} (it has: {', '.join(CHORDS)})")
        rate = self.options.sample_rate
        duration_ms = max(1, len(text)) * self.options.ms_per_char
        table = self.tables[voice]
        n = rate * duration_ms // 1000
        pcm = struct.pack(f"<{n}h", *(int(9000 * table[i % rate]) for i in range(n)))
        return Audio(data=wav(pcm, rate), format="wav", sample_rate=rate,
                     duration_ms=duration_ms)

    async def voices(self) -> list[dict[str, Any]]:
        return [{"name": name, "id": name, "language": "und", "sample_rate":
                 self.options.sample_rate} for name in CHORDS]


@hookimpl
def register_tts_backends() -> list[type[TTSBackend]]:
    return [Chime]
