"""Audio formats the engine sends: ``wav``, ``pcm16``, ``opus`` (Ogg) and ``mp3``.

Backends hand over WAV (or raw 16-bit PCM); ``convert`` turns that into the
format a client asked for (``audio_format`` in the request, ``speech.audio_format``
in the profile). Every result is a complete file a client can decode on its
own (``pcm16``: raw little-endian mono samples, nothing else), so each part of
a chunked sentence plays by itself and the decoded parts, back to back, are the
sentence.

Opus and MP3 are encoded with PyAV (``pip install 'companion-engine[audio]'``,
which bundles libopus and LAME): Opus at 32 kbit/s in Ogg, resampled to 24 kHz
(Opus's nearest rate to 22.05 kHz voices), MP3 at 48 kbit/s at the voice's own
rate. Either cuts an SSE reply's audio bytes about 10x against base64 WAV.
Encoding is blocking CPU work: ``convert_async`` runs it in a thread.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, get_args

from companion_engine.speech.wav import WavError, pcm_to_wav, wav_info

AudioFormat = Literal["wav", "pcm16", "opus", "mp3"]
FORMATS: tuple[str, ...] = get_args(AudioFormat)
#: Formats a backend may return that ``to_pcm`` reads without PyAV.
_RAW = ("wav", "pcm16", "pcm")

OPUS_BITRATE = 32_000
OPUS_RATE = 24_000
MP3_BITRATE = 48_000
#: Encoder effort: libopus complexity 4 of 10 in 60 ms frames (a quarter of the CPU of the
#: defaults, and smaller files, at 32 kbit/s speech; a whole file per event needs no low
#: frame latency), LAME 7 of 9 (fast).
_OPTIONS = {"libopus": {"compression_level": "4", "frame_duration": "60"},
            "libmp3lame": {"compression_level": "7"}}


class AudioFormatError(ValueError):
    """An unknown format, one this install cannot encode, or audio that cannot be read."""


def content_type(fmt: str, sample_rate: int) -> str:
    """The HTTP ``Content-Type`` of audio in ``fmt``."""
    return {"wav": "audio/wav", "opus": "audio/ogg; codecs=opus", "mp3": "audio/mpeg",
            "pcm16": f"audio/L16; rate={sample_rate}; channels=1"}.get(
                fmt, "application/octet-stream")


def unavailable(fmt: str) -> str | None:
    """None when ``fmt`` can be produced here, else why not."""
    if fmt not in FORMATS:
        return f"unknown audio format {fmt!r} (one of {', '.join(FORMATS)})"
    if fmt in ("opus", "mp3"):
        try:
            import av
        except ImportError:
            return (f"audio format {fmt!r} needs PyAV (pip install "
                    f"'companion-engine[audio]')")
        codec = "libopus" if fmt == "opus" else "libmp3lame"
        if codec not in av.codecs_available:
            return f"audio format {fmt!r}: this PyAV build has no {codec} encoder"
    return None


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    format: str
    sample_rate: int


def to_pcm(data: bytes, fmt: str, sample_rate: int) -> tuple[bytes, int]:
    """16-bit mono PCM and its rate from a backend's audio (WAV, raw PCM, or any format
    PyAV decodes)."""
    if fmt in ("pcm16", "pcm"):
        return data, sample_rate
    if fmt == "wav":
        try:
            info = wav_info(data)
        except WavError as exc:
            raise AudioFormatError(str(exc)) from None
        if info.sample_width == 2 and info.channels == 1:
            offset = len(data) - info.frames * 2
            return data[offset:], info.sample_rate
    return _decode(data)


def _decode(data: bytes) -> tuple[bytes, int]:
    try:
        import av
    except ImportError:
        raise AudioFormatError("decoding this audio needs PyAV "
                               "(pip install 'companion-engine[audio]')") from None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]
            rate = stream.rate or stream.codec_context.sample_rate
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            out = bytearray()
            for frame in container.decode(stream):
                for f in resampler.resample(frame):
                    out += bytes(f.planes[0])[: f.samples * 2]
            for f in resampler.resample(None):
                out += bytes(f.planes[0])[: f.samples * 2]
            return bytes(out), int(rate)
    except (av.error.FFmpegError, IndexError, ValueError) as exc:  # type: ignore[attr-defined]
        raise AudioFormatError(f"unreadable audio: {exc}") from None


def encode(pcm: bytes, sample_rate: int, fmt: str) -> Encoded:
    """16-bit mono PCM as one complete ``fmt`` file."""
    if fmt == "wav":
        return Encoded(pcm_to_wav(pcm, sample_rate), "wav", sample_rate)
    if fmt == "pcm16":
        return Encoded(pcm, "pcm16", sample_rate)
    why = unavailable(fmt)
    if why is not None:
        raise AudioFormatError(why)
    if fmt == "opus":
        return Encoded(_encode_av(pcm, sample_rate, "ogg", "libopus", OPUS_RATE, OPUS_BITRATE),
                       "opus", OPUS_RATE)
    return Encoded(_encode_av(pcm, sample_rate, "mp3", "libmp3lame", sample_rate, MP3_BITRATE),
                   "mp3", sample_rate)


def _encode_av(pcm: bytes, rate: int, container_format: str, codec: str, out_rate: int,
               bitrate: int) -> bytes:
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=out_rate, layout="mono",
                                      options=_OPTIONS.get(codec, {}))
        stream.bit_rate = bitrate
        samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        # The encoder wants fixed-size frames at its own rate: the resampler cuts them.
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                      rate=out_rate,
                                      frame_size=stream.codec_context.frame_size or None)
        frames = [*resampler.resample(frame), *resampler.resample(None)] if pcm else []
        for f in frames:
            for packet in stream.encode(f):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def convert(data: bytes, fmt: str, sample_rate: int, target: str) -> Encoded:
    """A backend's audio (``data`` in ``fmt``) as a ``target`` file; unchanged when it
    already is one."""
    if fmt == target or (fmt == "pcm" and target == "pcm16"):
        return Encoded(data, target, sample_rate)
    pcm, rate = to_pcm(data, fmt, sample_rate)
    return encode(pcm, rate, target)


async def convert_async(data: bytes, fmt: str, sample_rate: int, target: str) -> Encoded:
    """``convert`` off the event loop (WAV and PCM16 need no thread: they are a copy)."""
    if target in _RAW and fmt in _RAW:
        return convert(data, fmt, sample_rate, target)
    return await asyncio.to_thread(convert, data, fmt, sample_rate, target)
