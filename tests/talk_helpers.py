"""Real speech for the listening tests: espeak-ng utterances at 16 kHz, with silences and noise.

``Recording`` builds a microphone stream out of parts and remembers where each
spoken part really is: the voiced extent of espeak's output (its own leading and
trailing near-silence trimmed), so a detector can be checked against the times
the test generated, not against another detector.
"""

from __future__ import annotations

import atexit
import io
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import numpy as np

from companion_engine.speech.wav import pcm_to_wav

RATE = 16000
_CACHE: dict[tuple[str, str, int], np.ndarray] = {}

# espeak-ng's output for a text depends on everything it spoke before in the process: its
# pitch flutter runs on one process-wide phase (wavegen.c's static Flutter_ix) and its noise
# on one generator. A test's speech must not depend on which tests ran first, so each text is
# spoken by a fresh fork of a helper process whose espeak-ng never spoke (noise seeded).
_SPEAKER_SOURCE = r"""
import ctypes, os, struct, sys, threading
from loguru import logger
from companion_engine.speech import espeak
logger.remove()
out = sys.stdout.buffer
for line in sys.stdin:
    voice, rate, text = line.rstrip("\n").split("\t", 2)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            engine = espeak.engine()
            engine._ensure().espeak_ng_SetRandSeed(ctypes.c_long(1))
            job = espeak._Job(cancel=threading.Event())
            result = engine._synthesize(job, text, voice, int(rate), None, 100, False)
            with os.fdopen(w, "wb") as f:
                f.write(struct.pack("<I", result.sample_rate) + result.pcm)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    out.write(struct.pack("<I", len(data)) + data)
    out.flush()
"""
_speaker: subprocess.Popen[bytes] | None = None
_speaker_lock = threading.Lock()


def _speak_fresh(text: str, voice: str, rate: int) -> tuple[bytes, int]:
    """``text`` as espeak-ng speaks it the first time in a process: (PCM16, sample rate)."""
    global _speaker
    if "\n" in text or "\t" in text:
        raise ValueError("one line of text, please")
    with _speaker_lock:
        if _speaker is None or _speaker.poll() is not None:
            _speaker = subprocess.Popen([sys.executable, "-c", _SPEAKER_SOURCE],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            atexit.register(_stop_speaker, _speaker)
        assert _speaker.stdin is not None and _speaker.stdout is not None
        _speaker.stdin.write(f"{voice}\t{rate}\t{text}\n".encode())
        _speaker.stdin.flush()
        head = _speaker.stdout.read(4)
        if len(head) < 4:
            raise RuntimeError(f"the espeak-ng helper process died speaking {text!r}")
        data = _speaker.stdout.read(struct.unpack("<I", head)[0])
    if len(data) < 4:
        raise RuntimeError(f"espeak-ng could not speak {text!r} (voice {voice!r})")
    return data[4:], struct.unpack("<I", data[:4])[0]


def _stop_speaker(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()  # its loop ends
    proc.wait(10)


def speech(text: str, voice: str = "en-us", rate: int = 175) -> np.ndarray:
    """``text`` spoken by the embedded espeak-ng, as float samples at 16 kHz, the same
    whatever was spoken before (it blocks: call it from set-up code, not a coroutine)."""
    key = (text, voice, rate)
    if key not in _CACHE:
        raw, sample_rate = _speak_fresh(text, voice, rate)
        pcm = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
        n = int(len(pcm) * RATE / sample_rate)
        _CACHE[key] = np.interp(np.arange(n) * sample_rate / RATE, np.arange(len(pcm)),
                                pcm).astype(np.float32)
    return _CACHE[key]


def voiced_extent(x: np.ndarray, floor: float = 0.01) -> tuple[int, int]:
    """First and last sample above ``floor`` (espeak pads its output with quiet)."""
    loud = np.flatnonzero(np.abs(x) > floor)
    return (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, 0)


@dataclass
class Recording:
    """A microphone stream assembled from speech, silence and noise."""

    seed: int = 1
    parts: list[np.ndarray] = field(default_factory=list)
    #: (start_ms, end_ms) of each spoken part's voiced audio.
    segments: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    @property
    def samples(self) -> int:
        return sum(len(p) for p in self.parts)

    def say(self, text: str, *, gain: float = 1.0, voice: str = "en-us",
            max_ms: int | None = None) -> Recording:
        x = speech(text, voice) * gain
        a, b = voiced_extent(x)
        x = x[a:b]
        if max_ms is not None:
            x = x[:max_ms * RATE // 1000]
        start = self.samples
        self.parts.append(x)
        self.segments.append((start * 1000 // RATE, (start + len(x)) * 1000 // RATE))
        return self

    def silence(self, ms: int) -> Recording:
        self.parts.append(np.zeros(ms * RATE // 1000, np.float32))
        return self

    def noise(self, ms: int, level: float = 0.01) -> Recording:
        """White noise (a fan, a room): ``level`` is its RMS, 0.01 = -40 dBFS."""
        self.parts.append((self._rng.standard_normal(ms * RATE // 1000) * level)
                          .astype(np.float32))
        return self

    def with_noise(self, level: float) -> np.ndarray:
        """The whole stream with noise of RMS ``level`` under it (speech included)."""
        x = self.float()
        return x + (self._rng.standard_normal(len(x)) * level).astype(np.float32)

    def float(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)

    def pcm(self, x: np.ndarray | None = None) -> bytes:
        x = self.float() if x is None else x
        return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()

    def wav(self) -> bytes:
        return pcm_to_wav(self.pcm(), RATE)


def frames(pcm: bytes, ms: int = 20) -> list[bytes]:
    """The stream cut as a microphone sends it (``ms`` per frame)."""
    step = RATE * ms // 1000 * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


def encode(pcm: bytes, container: str, codec: str = "libopus", rate: int = 48000) -> bytes:
    """PCM16 16 kHz as a browser's MediaRecorder would send it (Ogg or WebM, Opus)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, "<i2").reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = RATE
        fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
        for resampled in av.AudioResampler(format=fmt, layout="mono", rate=rate).resample(frame):
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
