"""Audio formats for clients: WAV, raw PCM16, Ogg/Opus and MP3, checked by decoding with PyAV."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.speech import formats
from companion_engine.speech.espeak import engine
from companion_engine.speech.wav import pcm_to_wav

av = pytest.importorskip("av", reason="PyAV is not installed (pip install '.[audio]')")


@pytest.fixture(scope="module")
def speech() -> tuple[bytes, int]:
    """Two seconds or so of real speech (espeak-ng), as 16-bit PCM."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(engine().synthesize(
            "This sentence is long enough to measure the length of compressed audio."))
    finally:
        loop.close()
    return result.pcm, result.sample_rate


def decoded_ms(data: bytes) -> float:
    """Length of a compressed file as PyAV decodes it (what a client will hear)."""
    with av.open(io.BytesIO(data)) as c:
        samples = sum(f.samples for f in c.decode(c.streams.audio[0]))
        rate = c.streams.audio[0].rate
    return samples * 1000 / rate


@pytest.mark.parametrize(("fmt", "container"), [("opus", "ogg"), ("mp3", "mp3")])
def test_compressed_audio_decodes_to_the_right_duration(
        speech: tuple[bytes, int], fmt: str, container: str) -> None:
    pcm, rate = speech
    source_ms = len(pcm) / 2 * 1000 / rate
    out = formats.encode(pcm, rate, fmt)
    assert out.format == fmt
    with av.open(io.BytesIO(out.data)) as c:
        assert container in c.format.name
        assert c.streams.audio[0].codec_context.name in {"opus", "libopus", "mp3", "mp3float"}
    assert decoded_ms(out.data) == pytest.approx(source_ms, rel=0.05)
    assert len(out.data) * 5 < len(pcm)  # far smaller than the WAV it replaces


def test_short_parts_decode_to_their_duration_too(speech: tuple[bytes, int]) -> None:
    pcm, rate = speech
    part = pcm[: rate // 5 * 2]  # 200 ms, the size of a first streamed part
    for fmt in ("opus", "mp3"):
        assert decoded_ms(formats.encode(part, rate, fmt).data) == pytest.approx(200, rel=0.05)


def test_wav_and_pcm16_are_exact(speech: tuple[bytes, int]) -> None:
    pcm, rate = speech
    raw = formats.encode(pcm, rate, "pcm16")
    assert raw.data == pcm and raw.sample_rate == rate
    wav = formats.encode(pcm, rate, "wav")
    with wave.open(io.BytesIO(wav.data)) as w:
        assert w.getframerate() == rate and w.readframes(w.getnframes()) == pcm
    assert formats.to_pcm(wav.data, "wav", 0) == (pcm, rate)


def test_convert_reads_a_backends_wav_and_compressed_audio(speech: tuple[bytes, int]) -> None:
    pcm, rate = speech
    wav = pcm_to_wav(pcm, rate)
    assert formats.convert(wav, "wav", rate, "wav").data == wav  # unchanged
    assert formats.convert(wav, "wav", rate, "pcm16").data == pcm
    mp3 = formats.convert(wav, "wav", rate, "mp3").data
    back, back_rate = formats.to_pcm(mp3, "mp3", 0)  # an mp3 backend's audio, decoded
    assert back_rate == rate
    assert len(back) / 2 / rate == pytest.approx(len(pcm) / 2 / rate, rel=0.05)


async def test_convert_async_runs_encoders_off_the_loop(speech: tuple[bytes, int]) -> None:
    pcm, rate = speech
    out = await formats.convert_async(pcm_to_wav(pcm, rate), "wav", rate, "opus")
    assert out.format == "opus" and out.sample_rate == formats.OPUS_RATE


def test_content_types() -> None:
    assert formats.content_type("opus", 24000) == "audio/ogg; codecs=opus"
    assert formats.content_type("mp3", 22050) == "audio/mpeg"
    assert formats.content_type("pcm16", 22050) == "audio/L16; rate=22050; channels=1"
    assert formats.content_type("wav", 22050) == "audio/wav"


def test_unknown_format_is_refused() -> None:
    assert "unknown audio format" in (formats.unavailable("flac") or "")
    with pytest.raises(formats.AudioFormatError):
        formats.encode(b"\0\0", 22050, "flac")


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=2000), fmt=st.sampled_from(["wav", "mp3", "opus"]))
def test_garbage_audio_is_a_clear_error(data: bytes, fmt: str) -> None:
    try:
        pcm, rate = formats.to_pcm(data, fmt, 22050)
    except formats.AudioFormatError:
        return
    assert isinstance(pcm, bytes) and rate > 0  # some byte strings really are tiny files


def test_encoders_accept_empty_and_odd_lengths() -> None:
    for fmt in formats.FORMATS:
        out = formats.encode(b"", 22050, fmt)
        assert out.format == fmt
    samples = (np.sin(np.arange(999) / 5) * 5000).astype(np.int16).tobytes()
    assert decoded_ms(formats.encode(samples, 22050, "opus").data) == pytest.approx(
        999 / 22.05, abs=25)
