"""One text spoken outside a chat turn: ``POST /api/tts`` and ``POST /v1/audio/speech``.

The profile's lexicon and speech cleaners apply as in a turn, then its TTS backend speaks
and the audio is converted to the format asked for. Failures are ``ApiError``s with the
status both routes answer: 409 (this profile does not speak), 422 (nothing to speak, an
unknown voice, a format this install cannot make) or 502 (the backend failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from companion_engine.errors import ApiError, UnknownVoiceError
from companion_engine.speech import formats
from companion_engine.speech.session import speech_text
from companion_engine.speech.wav import WavError, wav_info
from companion_engine.turn import Turn

if TYPE_CHECKING:
    from companion_engine.engine import Engine
    from companion_engine.pipeline import Pipeline


@dataclass(frozen=True, slots=True)
class Spoken:
    data: bytes
    format: str
    sample_rate: int
    duration_ms: int | None

    @property
    def content_type(self) -> str:
        return formats.content_type(self.format, self.sample_rate)


async def speak_text(engine: Engine, pipeline: Pipeline, text: str, *, voice: str | None = None,
                     audio_format: str | None = None, speed: float | None = None) -> Spoken:
    """``text`` in the profile's voice (or ``voice``), as ``audio_format`` (default: the
    profile's ``speech.audio_format``, else the backend's own)."""
    tts = pipeline.tts
    if not tts.speaks:
        raise ApiError(409, f"text-to-speech is off: this profile's speech.tts is {tts.name!r}")
    target = audio_format or pipeline.profile.speech.audio_format
    why = formats.unavailable(target) if target else None
    if why is not None:
        raise ApiError(422, why)
    turn = Turn(profile=pipeline.profile, user_message="", engine=engine, voice=voice,
                speed=speed, audio_format=audio_format)
    spoken = await speech_text(pipeline, text, turn)
    if not spoken:
        raise ApiError(422, "nothing to speak: the text is only markup, emoji or punctuation "
                            "once cleaned for speech")
    try:
        audio = await tts.synthesize(spoken, turn)
    except UnknownVoiceError as exc:
        raise ApiError(422, str(exc)) from None
    except Exception as exc:
        logger.warning("speaking with {} failed: {}", tts.name, exc)
        raise ApiError(502, f"TTS backend {tts.name!r} failed: {exc}") from None
    duration_ms = audio.duration_ms
    if duration_ms is None and audio.format == "wav":
        try:
            duration_ms = wav_info(audio.data).duration_ms
        except WavError:
            pass
    if target is None or target == audio.format:
        return Spoken(audio.data, audio.format, audio.sample_rate, duration_ms)
    try:
        out = await formats.convert_async(audio.data, audio.format, audio.sample_rate, target)
    except formats.AudioFormatError as exc:
        raise ApiError(502, f"TTS backend {tts.name!r} audio could not be converted to "
                            f"{target}: {exc}") from None
    return Spoken(out.data, out.format, out.sample_rate, duration_ms)
