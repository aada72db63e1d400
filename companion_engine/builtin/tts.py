"""Built-in TTS backends: embedded espeak-ng, OpenAI-compatible, xtts, piper and none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger
from pydantic import Field

from companion_engine import hookimpl
from companion_engine.speech import espeak
from companion_engine.speech.espeak import PITCH_RANGE, RATE_RANGE
from companion_engine.speech.visemes import visemes_from_phonemes
from companion_engine.speech.wav import pcm_to_wav
from companion_engine.stages import Audio, StageOptions, TTSBackend

if TYPE_CHECKING:
    from companion_engine.engine import Engine
    from companion_engine.turn import Turn

def paced(rate: int, speed: float | None) -> int:
    """espeak's words per minute for a speaking-rate multiplier, within its range."""
    if not speed:
        return rate
    return max(RATE_RANGE[0], min(RATE_RANGE[1], round(rate * speed)))


class EspeakTTS(TTSBackend):
    """espeak-ng inside the server process: no TTS server to run, with visemes."""

    name: ClassVar[str] = "espeak"
    description: ClassVar[str] = "embedded espeak-ng (no server needed), with visemes"

    class Options(StageOptions):
        voice: str = Field(default="en-us", min_length=1, max_length=64)
        #: Words per minute.
        rate: int = Field(default=175, ge=RATE_RANGE[0], le=RATE_RANGE[1])
        pitch: int | None = Field(default=None, ge=PITCH_RANGE[0], le=PITCH_RANGE[1])
        volume: int = Field(default=100, ge=0, le=200)
        #: A short silence after each sentence, so sentences played back to back breathe.
        end_pause: bool = True

    options: Options

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        o = self.options
        result = await espeak.engine().synthesize(
            text, voice=turn.voice or o.voice, rate=paced(o.rate, turn.speed), pitch=o.pitch,
            volume=o.volume, end_pause=o.end_pause)
        return Audio(
            data=pcm_to_wav(result.pcm, result.sample_rate),
            format="wav",
            sample_rate=result.sample_rate,
            visemes=visemes_from_phonemes(result.phonemes, result.duration_ms),
            duration_ms=result.duration_ms,
        )

    async def voices(self) -> list[dict[str, Any]]:
        return list(await espeak.engine().voices())


class NoTTS(TTSBackend):
    """Text only: sentences are still split and shown, nothing is spoken."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "text only, no audio"
    speaks: ClassVar[bool] = False

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        raise RuntimeError("speech.tts is 'none': this profile does not speak")


@hookimpl
def register_tts_backends() -> list[type[TTSBackend]]:
    from companion_engine.speech.http_tts import OpenAITTS, PiperTTS, XttsTTS

    return [EspeakTTS, OpenAITTS, XttsTTS, PiperTTS, NoTTS]


async def _warm_up(engine: Engine) -> None:
    tts = engine.pipeline.tts
    if isinstance(tts, EspeakTTS):
        try:
            await espeak.engine().warm_up(tts.options.voice)
        except Exception as exc:
            logger.error("espeak-ng could not start with voice {!r}: {}", tts.options.voice, exc)


@hookimpl
async def startup(engine: Engine) -> None:
    """Load espeak-ng and its voice before the first turn needs them."""
    await _warm_up(engine)


@hookimpl
async def config_reloaded(engine: Engine) -> None:
    await _warm_up(engine)
