"""Audio from clients into ``AudioInput``: 16 kHz mono PCM16, whatever was uploaded.

Accepted: WAV (PCM 8/16/24/32-bit, any rate and channel count), raw PCM16
(``audio/L16; rate=16000`` or ``audio/pcm`` with a sample rate), and, through
PyAV (``companion-engine[talk]``), what browsers record with ``MediaRecorder``
(Ogg/Opus, WebM/Opus) plus MP3, M4A/AAC and FLAC. The container is sniffed from
the bytes, not trusted from the declared type. Decoding is CPU work on a
thread, and stops at ``max_seconds`` of audio, so a small compressed file
cannot expand into hours of samples.

Every failure is an ``AudioDecodeError`` carrying the HTTP status a route
should answer (400 undecodable, 413 too long, 415 not audio or needs PyAV,
422 empty).
"""

from __future__ import annotations

import asyncio
import io
import wave

from companion_engine.stages import AudioInput

TARGET_RATE = 16000
#: Containers recognised by their first bytes.
MAGIC = ((b"RIFF", "wav"), (b"OggS", "ogg"), (b"\x1aE\xdf\xa3", "webm"), (b"fLaC", "flac"),
         (b"ID3", "mp3"), (b"\xff\xfb", "mp3"), (b"\xff\xf3", "mp3"), (b"\xff\xf2", "mp3"))
RAW_TYPES = frozenset({"audio/l16", "audio/pcm", "audio/x-pcm", "audio/raw"})


class AudioDecodeError(ValueError):
    """The upload is not audio this server can read; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    """The container format from the first bytes (``wav``, ``ogg``, ``webm``...)."""
    for magic, name in MAGIC:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return "mp4"
    return None


async def decode_audio(data: bytes, content_type: str | None = None, *,
                       sample_rate: int | None = None, max_seconds: float = 120,
                       language: str | None = None) -> AudioInput:
    """Decode an upload on a worker thread; see the module docstring."""
    return await asyncio.to_thread(decode_sync, data, content_type, sample_rate=sample_rate,
                                   max_seconds=max_seconds, language=language)


def decode_sync(data: bytes, content_type: str | None = None, *,
                sample_rate: int | None = None, max_seconds: float = 120,
                language: str | None = None) -> AudioInput:
    if not data:
        raise AudioDecodeError(422, "the audio is empty")
    mime, params = _parse_type(content_type)
    kind = sniff(data)
    if kind == "wav":
        try:
            pcm, rate, channels, width = _read_wav(data)
        except AudioDecodeError as wav_error:
            if not _has_av():
                raise
            try:
                return _decode_av(data, "wav", max_seconds, language)  # float, compressed
            except AudioDecodeError as exc:
                raise (exc if exc.status == 413 else wav_error) from None
        pcm = _to_pcm16(pcm, width)
    elif kind is None and (mime in RAW_TYPES or sample_rate is not None):
        rate = sample_rate or _int_param(params, "rate") or TARGET_RATE
        channels = _int_param(params, "channels") or 1
        if mime == "audio/l16":  # RFC 2586: network byte order
            pcm = _swap16(data)
        else:
            pcm = data
        if len(pcm) % (2 * channels):
            raise AudioDecodeError(400, "raw PCM16 audio must be a whole number of samples "
                                        "(an even number of bytes per channel)")
        if not 8000 <= rate <= 192000:
            raise AudioDecodeError(400, f"sample rate {rate} is outside 8000..192000 Hz")
    elif kind is not None or (mime or "").startswith(("audio/", "video/")):
        return _decode_av(data, kind, max_seconds, language)
    else:
        raise AudioDecodeError(415, "not audio: send WAV, raw PCM16 (audio/L16; rate=16000), "
                                    "Ogg/Opus, WebM/Opus, MP3, M4A or FLAC")
    pcm = _mono_16k(pcm, rate, channels)
    return _checked(AudioInput(pcm=pcm, sample_rate=TARGET_RATE, language=language), max_seconds)


def _checked(audio: AudioInput, max_seconds: float) -> AudioInput:
    if not audio.pcm:
        raise AudioDecodeError(422, "the audio holds no samples")
    if audio.duration_ms > max_seconds * 1000:
        raise AudioDecodeError(413, f"the audio is longer than {max_seconds:g} s")
    return audio


def _parse_type(content_type: str | None) -> tuple[str | None, dict[str, str]]:
    if not content_type:
        return None, {}
    mime, *rest = content_type.split(";")
    params = {}
    for item in rest:
        key, _, value = item.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return mime.strip().lower(), params


def _int_param(params: dict[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise AudioDecodeError(400, f"content type parameter {name}={value!r} is not a "
                                    "number") from None


def _read_wav(data: bytes) -> tuple[bytes, int, int, int]:
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, ValueError) as exc:
        raise AudioDecodeError(400, f"unreadable WAV file: {exc}") from None
    if not (channels and rate and width in (1, 2, 3, 4)):
        raise AudioDecodeError(400, f"unsupported WAV: {channels} channels, {rate} Hz, "
                                    f"{width * 8}-bit")
    frames = frames[:len(frames) // (width * channels) * width * channels]
    return frames, rate, channels, width


def _swap16(data: bytes) -> bytes:
    import numpy as np

    return np.frombuffer(data[:len(data) // 2 * 2], dtype=">i2").astype("<i2").tobytes()


def _to_pcm16(pcm: bytes, width: int) -> bytes:
    if width == 2:
        return pcm
    np = _numpy()
    if width == 1:  # unsigned 8-bit
        return ((np.frombuffer(pcm, np.uint8).astype(np.int16) - 128) << 8).astype("<i2").tobytes()
    if width == 3:
        raw = np.frombuffer(pcm, np.uint8).reshape(-1, 3)
        return raw[:, 1:].copy().tobytes()  # the top two bytes, little-endian
    return (np.frombuffer(pcm, "<i4") >> 16).astype("<i2").tobytes()


def _mono_16k(pcm: bytes, rate: int, channels: int) -> bytes:
    if channels == 1 and rate == TARGET_RATE:
        return pcm
    np = _numpy()
    samples = np.frombuffer(pcm, "<i2").astype(np.float32)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != TARGET_RATE:
        n = int(len(samples) * TARGET_RATE / rate)
        samples = np.interp(np.arange(n) * (rate / TARGET_RATE), np.arange(len(samples)),
                            samples)
    return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


def _numpy():  # type: ignore[no-untyped-def]
    try:
        import numpy
    except ImportError:
        raise AudioDecodeError(415, "only 16 kHz mono 16-bit audio can be read without numpy: "
                                    "pip install 'companion-engine[talk]'") from None
    return numpy


def _has_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _decode_av(data: bytes, kind: str | None, max_seconds: float,
               language: str | None) -> AudioInput:
    try:
        import av
    except ImportError:
        raise AudioDecodeError(415, f"{kind or 'compressed'} audio needs PyAV: "
                                    "pip install 'companion-engine[talk]' (or send WAV)") from None
    limit = int(max_seconds * TARGET_RATE) * 2
    out = bytearray()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError(400, "the file has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=TARGET_RATE)
            for frame in container.decode(stream):
                for chunk in resampler.resample(frame):
                    out += _frame_bytes(chunk)
                if len(out) > limit:
                    raise AudioDecodeError(413, f"the audio is longer than {max_seconds:g} s")
            for chunk in resampler.resample(None):
                out += _frame_bytes(chunk)
    except AudioDecodeError:
        raise
    except (av.FFmpegError, ValueError, IndexError, EOFError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioDecodeError(400, f"could not decode the {kind or 'audio'} file: "
                                    f"{reason}") from None
    return _checked(AudioInput(pcm=bytes(out), sample_rate=TARGET_RATE, language=language),
                    max_seconds)


def _frame_bytes(frame: object) -> bytes:
    plane = frame.planes[0]  # type: ignore[attr-defined]
    return bytes(plane)[:frame.samples * 2]  # type: ignore[attr-defined]
