"""Built-in TTS backend ``piper_local``: Piper's neural voices inside the server process.

The ``piper`` backend (``builtin/tts.py``) talks to a Piper HTTP server; this one
runs the voice here (``pip install 'companion-engine[piper]'``), see
``companion_engine.speech.piper``. The model is loaded once, in ``setup``, and
shared by every turn (and every pipeline naming the same voice); ``aclose``
releases it. When Piper or the voice is missing and ``fallback`` is ``espeak``
the backend says so in one log line and speaks with espeak-ng instead.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from loguru import logger
from pydantic import Field

from companion_engine import hookimpl
from companion_engine.errors import UnknownVoiceError
from companion_engine.speech import formats, piper
from companion_engine.speech.visemes import visemes_from_phonemes
from companion_engine.speech.wav import pcm_to_wav
from companion_engine.stages import Audio, StageOptions, TTSBackend

if TYPE_CHECKING:
    from companion_engine.engine import Engine
    from companion_engine.turn import Turn


class PiperLocalTTS(TTSBackend):
    """Piper voices run in process (ONNX on the CPU), streamed within a sentence, with visemes."""

    name: ClassVar[str] = "piper_local"
    description: ClassVar[str] = "Piper neural voices in process (piper-tts), with visemes"
    marks_final: ClassVar[bool] = True

    class Options(StageOptions):
        #: A voice id (``en_US-joe-medium``; see ``GET /api/tts/voices``) or a path to an
        #: ``.onnx`` model with its ``.onnx.json`` beside it.
        voice: str = Field(default="en_US-joe-medium", min_length=1, max_length=300)
        #: A folder of ``*.onnx`` voices, searched before the installed voice packages.
        voices_dir: Path | None = None
        #: Speaker of a multi-speaker voice: its id number or name.
        speaker: int | str | None = None
        #: Speaking time per phoneme (>1 slower, <1 faster); None: the voice's own.
        length_scale: float | None = Field(default=None, gt=0.05, le=5)
        #: Variation in the voice; None: the voice's own (0 makes it repeatable).
        noise_scale: float | None = Field(default=None, ge=0, le=2)
        #: Variation in phoneme lengths; None: the voice's own.
        noise_w_scale: float | None = Field(default=None, ge=0, le=2)
        volume: float = Field(default=1.0, gt=0, le=4)
        #: What speaks when Piper or the voice is not available: ``espeak``, or ``none``
        #: to fail the profile instead.
        fallback: Literal["espeak", "none"] = "espeak"

    options: Options

    def __init__(self, options: StageOptions | None = None) -> None:
        super().__init__(options)
        self._base = Path.cwd()
        self._catalog: list[piper.VoiceInfo] | None = None
        self._models: dict[Path, piper.PiperModel] = {}
        self._loading: dict[Path, asyncio.Future[piper.PiperModel]] = {}
        self._default: piper.VoiceInfo | None = None
        self._fallback: TTSBackend | None = None
        self._fallback_reason: str | None = None
        self._prepared: asyncio.Future[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def setup(self, engine: Engine | None = None) -> None:
        """Start loading the configured voice (in a worker thread) without holding up the
        server's start; the first synthesis waits for it."""
        if engine is not None:
            self._base = Path(engine.config.base_dir)
        if self._prepared is None:
            self._prepared = asyncio.ensure_future(self._prepare())
            self._prepared.add_done_callback(_quiet)

    async def ready(self) -> None:
        """Wait until the voice is loaded (or the fallback chosen); raise if neither."""
        await self.setup(None)
        assert self._prepared is not None
        await asyncio.shield(self._prepared)

    async def _prepare(self) -> None:
        # Imports ONNX Runtime and numpy the first time (~0.2 s): not on the event loop.
        reason = await asyncio.to_thread(piper.available)
        if reason is None:
            try:
                self._default = await self._resolve(self.options.voice)
                await self._model(self._default)
            except (piper.PiperError, UnknownVoiceError) as exc:
                reason = str(exc)
        if reason is not None:
            if self.options.fallback == "none":
                raise piper.PiperError(f"piper_local cannot speak: {reason}")
            from companion_engine.builtin.tts import EspeakTTS

            self._fallback = EspeakTTS()
            self._fallback_reason = reason
            logger.warning("piper_local: {}; speaking with espeak-ng instead", reason)

    async def aclose(self) -> None:
        if self._prepared is not None and not self._prepared.done():
            self._prepared.cancel()
            await asyncio.gather(self._prepared, return_exceptions=True)
        models, self._models = list(self._models.values()), {}
        for model in models:
            piper.voices().release(model)
        if self._fallback is not None:
            await self._fallback.aclose()

    @property
    def fallback_reason(self) -> str | None:
        """Why espeak-ng speaks instead of Piper (None while Piper speaks)."""
        return self._fallback_reason

    # --- voices -----------------------------------------------------------------------------

    def _dirs(self) -> list[Path]:
        d = self.options.voices_dir
        return [d if d.is_absolute() else self._base / d] if d is not None else []

    async def catalog(self) -> list[piper.VoiceInfo]:
        if self._catalog is None:
            self._catalog = await asyncio.to_thread(piper.discover_voices, self._dirs())
        return self._catalog

    async def _resolve(self, voice: str) -> piper.VoiceInfo:
        if voice.endswith(".onnx") or "/" in voice or "\\" in voice:
            path = Path(voice)
            path = path if path.is_absolute() else self._base / path
            return await asyncio.to_thread(piper.read_voice, path, "model")
        info = piper.find_voice(voice, await self.catalog())
        if info is None:
            known = ", ".join(v.id for v in await self.catalog()) or "none installed"
            raise UnknownVoiceError(f"unknown Piper voice {voice!r} (known: {known})")
        return info

    async def _model(self, info: piper.VoiceInfo) -> piper.PiperModel:
        model = self._models.get(info.model)
        if model is not None:
            return model
        pending = self._loading.get(info.model)
        if pending is None:
            pending = asyncio.ensure_future(piper.voices().acquire(info))
            self._loading[info.model] = pending
            try:
                model = await asyncio.shield(pending)
            finally:
                self._loading.pop(info.model, None)
            self._models[info.model] = model
            return model
        return await asyncio.shield(pending)

    async def _voice_for(self, turn: Turn | None) -> piper.PiperModel:
        asked = turn.voice if turn is not None else None
        if not asked or (self._default is not None and asked in (
                self._default.id, self.options.voice)):
            assert self._default is not None
            return await self._model(self._default)
        return await self._model(await self._resolve(asked))

    def _synth_options(self, model: piper.PiperModel, turn: Turn) -> piper.SynthOptions:
        o = self.options
        speaker = o.speaker
        if isinstance(speaker, str):
            names = model.info.speakers
            if speaker not in names:
                raise UnknownVoiceError(f"Piper voice {model.info.id} has no speaker "
                                        f"{speaker!r} (speakers: {', '.join(names) or 'one'})")
            speaker = model.speaker_id(speaker)
        return piper.SynthOptions(length_scale=o.length_scale, noise_scale=o.noise_scale,
                                  noise_w_scale=o.noise_w_scale, speaker=speaker,
                                  volume=o.volume, speed=turn.speed or 1.0)

    async def voices(self) -> list[dict[str, Any]]:
        await self.ready()
        if self._fallback is not None:
            return [{**v, "backend": "espeak"} for v in await self._fallback.voices()]
        loaded = set(piper.voices().loaded())
        return [{**v.as_dict(), "loaded": v.id in loaded} for v in await self.catalog()]

    # --- speaking ---------------------------------------------------------------------------

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        await self.ready()
        if self._fallback is not None:
            return await self._fallback.synthesize(text, _without_voice(turn))
        model = await self._voice_for(turn)
        result = await piper.voices().synthesize(model, text, self._synth_options(model, turn),
                                                 _target(turn))
        return _audio(result)

    async def stream(self, text: str, turn: Turn) -> AsyncIterator[Audio]:
        """The sentence's audio in parts as the decoder makes them (first part ~186 ms)."""
        await self.ready()
        if self._fallback is not None:
            audio = await self._fallback.synthesize(text, _without_voice(turn))
            audio.final = True  # one part, the last (``marks_final``)
            yield audio
            return
        model = await self._voice_for(turn)
        async for chunk in piper.voices().stream(model, text, self._synth_options(model, turn),
                                                 target=_target(turn)):
            yield _audio(chunk)


def _target(turn: Turn) -> str | None:
    """The turn's audio format when this install can make it: the worker that synthesises a
    sentence encodes it too (else the session converts, or reports why it cannot)."""
    fmt = turn.audio_format or turn.profile.speech.audio_format
    return fmt if fmt and formats.unavailable(fmt) is None else None


def _audio(chunk: piper.PcmChunk) -> Audio:
    duration = chunk.duration_ms
    visemes = visemes_from_phonemes(chunk.phonemes, duration) if chunk.phonemes else []
    if chunk.encoded is not None:
        out = chunk.encoded
        return Audio(data=out.data, format=out.format, sample_rate=out.sample_rate,
                     visemes=visemes, duration_ms=duration, final=chunk.final)
    return Audio(data=pcm_to_wav(chunk.pcm, chunk.sample_rate), format="wav",
                 sample_rate=chunk.sample_rate, visemes=visemes, duration_ms=duration,
                 final=chunk.final)


def _without_voice(turn: Turn) -> Turn:
    """The turn for the espeak fallback: Piper voice names mean nothing to espeak."""
    if not turn.voice:
        return turn
    view = copy.copy(turn)
    view.voice = None
    return view


def _quiet(task: asyncio.Future[None]) -> None:
    """The load's error is raised to whoever awaits the voice; nothing to log twice."""
    if not task.cancelled():
        task.exception()


@hookimpl
def register_tts_backends() -> list[type[TTSBackend]]:
    return [PiperLocalTTS]

