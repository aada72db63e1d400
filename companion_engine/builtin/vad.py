"""Built-in voice activity detectors: Silero (ONNX, the default) and webrtcvad (light)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger
from pydantic import Field

from companion_engine import hookimpl
from companion_engine.speech import silero
from companion_engine.stages import VADBackend, VADOptions

if TYPE_CHECKING:
    from companion_engine.engine import Engine


class WebRTCVAD(VADBackend):
    """The WebRTC project's GMM detector (``webrtcvad-wheels``): tiny and fast, rougher."""

    name: ClassVar[str] = "webrtcvad"
    description: ClassVar[str] = "WebRTC's voice activity detector (light, 30 ms frames)"
    frame_samples = 480

    class Options(VADOptions):
        #: 0 (lets most through) to 3 (filters non-speech hardest).
        aggressiveness: int = Field(default=3, ge=0, le=3)

    options: Options

    async def setup(self, engine: Engine) -> None:
        try:
            import webrtcvad  # noqa: F401
        except ImportError:
            raise RuntimeError("webrtcvad is not installed: pip install webrtcvad-wheels"
                               ) from None

    def new_state(self) -> Any:
        import webrtcvad

        return webrtcvad.Vad(self.options.aggressiveness)

    def speech_probability(self, frame: bytes, state: Any) -> float:
        return 1.0 if state.is_speech(frame, self.sample_rate) else 0.0


class SileroVAD(VADBackend):
    """Silero VAD v6 run by ONNX Runtime; falls back to webrtcvad when it is not installed."""

    name: ClassVar[str] = "silero"
    description: ClassVar[str] = "Silero VAD (ONNX model of the silero-vad wheel, no torch)"
    frame_samples = silero.FRAME_SAMPLES

    class Options(VADOptions):
        #: Use ``webrtcvad`` (with one warning) when the model cannot be loaded, instead of
        #: rejecting the profile.
        fallback: bool = True

    options: Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._path: Path | None = None
        self._model: silero.SileroModel | None = None
        self._fallback: WebRTCVAD | None = None

    async def setup(self, engine: Engine) -> None:
        """Check that the model can load; load it when the first frame is scored (a server
        nobody talks to never pays ONNX Runtime's memory)."""
        try:
            self._path = await asyncio.to_thread(silero.check_available)
            return
        except silero.SileroUnavailable as exc:
            if not self.options.fallback:
                raise
            reason = str(exc)
        fields = set(VADOptions.model_fields)
        fallback = WebRTCVAD(WebRTCVAD.Options(**self.options.model_dump(include=fields)))
        await fallback.setup(engine)
        logger.warning("speech.vad 'silero' is not available ({}); using 'webrtcvad'", reason)
        self._fallback = fallback
        self.frame_samples = fallback.frame_samples

    @property
    def backend(self) -> str:
        """What actually scores the frames: ``silero`` or ``webrtcvad`` (the fallback)."""
        return "webrtcvad" if self._fallback is not None else "silero"

    def new_state(self) -> Any:
        if self._fallback is not None:
            return self._fallback.new_state()
        return silero.SileroState()

    def speech_probability(self, frame: bytes, state: Any) -> float:
        return self.speech_probabilities(frame, state)[0]

    def speech_probabilities(self, frames: bytes, state: Any) -> list[float]:
        if self._fallback is not None:
            return self._fallback.speech_probabilities(frames, state)
        model = self._model
        if model is None:  # the first frame (a worker thread: loading blocks only it)
            if self._path is None:
                raise RuntimeError("the Silero model is not available (setup() was not run)")
            model = self._model = silero.load(self._path)
        return model.probabilities(frames, state)


@hookimpl
def register_vad_backends() -> list[type[VADBackend]]:
    return [SileroVAD, WebRTCVAD]
