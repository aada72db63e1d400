"""WAV in and out: every backend hands the session a playable file with a known length.

Backends return WAV (espeak, xtts, piper) or raw 16-bit PCM (OpenAI-compatible
``pcm``); these helpers wrap PCM into WAV and read rate and length back out, so
``audio_ready.duration_ms`` is always measured from the audio itself.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass


class WavError(ValueError):
    """The bytes are not a WAV file this server can read."""


@dataclass(frozen=True, slots=True)
class WavInfo:
    sample_rate: int
    channels: int
    sample_width: int
    frames: int

    @property
    def duration_ms(self) -> int:
        return round(self.frames * 1000 / self.sample_rate) if self.sample_rate else 0


def pcm_to_wav(pcm: bytes, sample_rate: int, *, channels: int = 1, sample_width: int = 2) -> bytes:
    """Wrap raw little-endian PCM in a WAV container."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(sample_width)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def wav_info(data: bytes) -> WavInfo:
    """Rate, channels and length of a WAV file; ``WavError`` if it is not one.

    Streaming servers write 0 or 0xFFFFFFFF as the data size (the length was not
    known when the header went out); the length is then taken from the bytes.
    """
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            info = WavInfo(w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes())
            data_start = _data_offset(data)
    except (wave.Error, EOFError) as exc:
        raise WavError(f"unreadable WAV: {exc}") from None
    frame_bytes = info.channels * info.sample_width
    if frame_bytes and data_start is not None:
        actual = (len(data) - data_start) // frame_bytes
        if info.frames == 0 or info.frames > actual:
            info = WavInfo(info.sample_rate, info.channels, info.sample_width, actual)
    return info


def _data_offset(data: bytes) -> int | None:
    """Byte offset where the ``data`` chunk's samples start."""
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if data[pos : pos + 4] == b"data":
            return pos + 8
        pos += 8 + size + (size & 1)
    return None
