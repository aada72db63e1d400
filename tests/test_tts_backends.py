"""TTS backends against real engines: espeak-ng in process, HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import Iterator

import pytest

from companion_engine.builtin.tts import EspeakTTS
from companion_engine.config import Profile
from companion_engine.speech.http_tts import OPENAI_VOICES, OpenAITTS, PiperTTS, TTSError, XttsTTS
from companion_engine.speech.session import SpeechSession
from companion_engine.speech.visemes import viseme_for
from companion_engine.speech.wav import wav_info
from companion_engine.turn import Turn
from tests.speech_helpers import Recorder, make_pipeline, make_turn
from tests.tts_helpers import TTSServer, running_tts_server


@pytest.fixture(scope="module")
def server_module() -> Iterator[TTSServer]:
    with running_tts_server() as server:
        yield server


@pytest.fixture
def server(server_module: TTSServer) -> TTSServer:
    server_module.reset()
    return server_module


def turn() -> Turn:
    return Turn(profile=Profile(), user_message="hi")


def decode(data: bytes) -> tuple[int, int, int]:
    """(sample rate, frames, channels) read by the standard library's WAV reader."""
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getframerate(), w.getnframes(), w.getnchannels()


# --- espeak -----------------------------------------------------------------------------------


async def test_espeak_audio_decodes_as_wav_of_the_stated_length() -> None:
    audio = await EspeakTTS().synthesize("Hello there, how are you today?", turn())
    rate, frames, channels = decode(audio.data)
    assert (audio.format, rate, channels) == ("wav", 22050, 1)
    assert audio.sample_rate == rate
    assert audio.duration_ms == round(frames * 1000 / rate)
    assert 1000 < audio.duration_ms < 4000
    times = [v["time_ms"] for v in audio.visemes]
    assert times == sorted(times)
    assert audio.visemes[-1]["viseme"] == "sil"
    assert {"PP", "E"} & {v["viseme"] for v in audio.visemes}


async def test_espeak_rate_voice_and_errors() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    slow = await EspeakTTS(EspeakTTS.Options(rate=100)).synthesize(text, turn())
    fast = await EspeakTTS(EspeakTTS.Options(rate=300)).synthesize(text, turn())
    assert slow.duration_ms > 2 * fast.duration_ms
    t = turn()
    t.voice = "de"
    german = await EspeakTTS().synthesize("Guten Tag, wie geht es Ihnen?", t)
    assert german.duration_ms > 500
    t.voice = "xx-nope"
    with pytest.raises(RuntimeError, match="unknown espeak voice 'xx-nope'"):
        await EspeakTTS().synthesize("Hello.", t)
    voices = await EspeakTTS().voices()
    assert {"en-us", "de", "fr-fr"} <= {v["id"] for v in voices}


async def test_espeak_serialises_concurrent_calls() -> None:
    texts = [f"Sentence number {i} is being spoken now." for i in range(8)]
    results = await asyncio.gather(*(EspeakTTS().synthesize(t, turn()) for t in texts))
    for text, audio in zip(texts, results, strict=True):
        alone = await EspeakTTS().synthesize(text, turn())
        # Same phonemes in the same order, same length to within a few ms: nothing interleaved.
        assert [v["phoneme"] for v in audio.visemes] == [v["phoneme"] for v in alone.visemes]
        assert abs(audio.duration_ms - alone.duration_ms) < 20


def median_f0(wav: bytes) -> float:
    """The median fundamental frequency of the loud 50 ms frames (autocorrelation)."""
    np = pytest.importorskip("numpy")
    with wave.open(io.BytesIO(wav), "rb") as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float)
    n, lo, hi = rate // 20, rate // 400, rate // 60
    found = []
    for i in range(0, len(x) - n, n):
        frame = x[i:i + n] - x[i:i + n].mean()
        if np.abs(frame).max() >= 0.3 * np.abs(x).max():
            ac = np.correlate(frame, frame, "full")[n - 1:]
            found.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(found))


async def test_espeak_without_a_pitch_speaks_at_the_default_after_one_with_a_pitch() -> None:
    """espeak-ng keeps parameters across calls (and voice changes): a voice with no pitch
    must not speak at the pitch the previous sentence asked for."""
    text = "Aaah, ooh, I see."
    plain = median_f0((await EspeakTTS().synthesize(text, turn())).data)
    high = median_f0((await EspeakTTS(EspeakTTS.Options(pitch=90)).synthesize(text, turn())).data)
    again = median_f0((await EspeakTTS().synthesize(text, turn())).data)
    assert high > 1.3 * plain
    assert again == pytest.approx(plain, rel=0.1)


def test_visemes_of_ipa_phonemes() -> None:
    assert [viseme_for(p) for p in ["p", "ˈoʊ", "f", "θ", "tʃ", "s", "ɹ", "", "ə"]] == [
        "PP", "oh", "FF", "TH", "CH", "SS", "RR", "sil", "E"]


# --- openai-compatible ------------------------------------------------------------------------


async def test_openai_wav_request_shape_and_audio(server: TTSServer) -> None:
    stage = OpenAITTS(OpenAITTS.Options(base_url=f"{server.url}/v1", api_key="sk-test",
                                        model="kokoro", voice="af_bella", speed=1.25))
    try:
        audio = await stage.synthesize("Hello from Kokoro.", turn())
    finally:
        await stage.aclose()
    assert server.requests == [("openai", {"model": "kokoro", "input": "Hello from Kokoro.",
                                           "voice": "af_bella", "response_format": "wav",
                                           "speed": 1.25})]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    rate, frames, _ = decode(audio.data)
    assert audio.duration_ms == round(frames * 1000 / rate) > 500


async def test_openai_pcm_is_wrapped_into_wav(server: TTSServer) -> None:
    stage = OpenAITTS(OpenAITTS.Options(base_url=f"{server.url}/v1", format="pcm",
                                        pcm_sample_rate=22050))
    try:
        audio = await stage.synthesize("Raw samples.", turn())
    finally:
        await stage.aclose()
    rate, frames, _ = decode(audio.data)
    assert (audio.format, rate) == ("wav", 22050)
    assert audio.duration_ms == round(frames * 1000 / 22050)
    assert "Authorization" not in server.headers[0]


async def test_openai_mp3_passes_through(server: TTSServer) -> None:
    stage = OpenAITTS(OpenAITTS.Options(base_url=f"{server.url}/v1", format="mp3"))
    try:
        audio = await stage.synthesize("Compressed.", turn())
    finally:
        await stage.aclose()
    assert audio.format == "mp3" and audio.data.startswith(b"ID3")


async def test_openai_voices_listed_or_the_openai_set(server: TTSServer) -> None:
    stage = OpenAITTS(OpenAITTS.Options(base_url=f"{server.url}/v1"))
    try:
        assert [v["id"] for v in await stage.voices()] == ["af_bella", "af_sky", "am_adam"]
        server.voices_status = 404
        assert [v["id"] for v in await stage.voices()] == list(OPENAI_VOICES)
        server.voices_status = 500
        with pytest.raises(TTSError, match="HTTP 500"):
            await stage.voices()
    finally:
        await stage.aclose()


# --- xtts and piper ---------------------------------------------------------------------------


async def test_xtts_request_shape_and_final_period(server: TTSServer) -> None:
    stage = XttsTTS(XttsTTS.Options(base_url=server.url, speaker="calm", language="de"))
    try:
        audio = await stage.synthesize("Hallo Welt.", turn())
        await stage.synthesize("Warte...", turn())
        voices = await stage.voices()
    finally:
        await stage.aclose()
    assert server.requests == [
        ("xtts", {"text": "Hallo Welt", "speaker_wav": "calm", "language": "de"}),
        ("xtts", {"text": "Warte...", "speaker_wav": "calm", "language": "de"}),
    ]
    assert wav_info(audio.data).duration_ms == audio.duration_ms > 300
    assert [v["id"] for v in voices] == ["female", "calm"]


async def test_piper_request_shape_and_voices(server: TTSServer) -> None:
    stage = PiperTTS(PiperTTS.Options(base_url=server.url, voice="en_US-lessac-medium",
                                      length_scale=1.2))
    try:
        audio = await stage.synthesize("Piper speaks.", turn())
        voices = await stage.voices()
    finally:
        await stage.aclose()
    assert server.requests == [("piper", {"text": "Piper speaks.", "voice": "en_US-lessac-medium",
                                          "length_scale": 1.2})]
    assert decode(audio.data)[0] == audio.sample_rate
    assert voices[1] == {"id": "en_US-libritts-high", "name": "en_US-libritts-high",
                         "languages": ["en_US"], "speakers": ["p1", "p2"]}


async def test_http_errors_name_the_server_and_reason(server: TTSServer) -> None:
    piper = PiperTTS(PiperTTS.Options(base_url=server.url))
    dead = XttsTTS(XttsTTS.Options(base_url="http://127.0.0.1:9", timeout_s=2))
    try:
        with pytest.raises(TTSError, match=r"piper TTS server .*/synthesize answered HTTP 500"):
            await piper.synthesize("FAIL now", turn())
        with pytest.raises(TTSError, match="did not send WAV audio"):
            await piper.synthesize("NOT WAV", turn())
        with pytest.raises(TTSError, match=r"xtts TTS server http://127.0.0.1:9/.* unreachable"):
            await dead.synthesize("Hello.", turn())
    finally:
        await piper.aclose()
        await dead.aclose()


# --- scheduling through the session -----------------------------------------------------------


async def test_one_failed_sentence_gives_audio_error_and_the_rest_goes_on(
    server: TTSServer,
) -> None:
    pipeline = make_pipeline({"cleaners": [], "concurrency": 2,
                              "tts": {"openai": {"base_url": f"{server.url}/v1"}}})
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    try:
        for s in ["First sentence.", "This one will FAIL.", "Third sentence.", "Fourth one."]:
            session.add(s)
        await session.finish()
    finally:
        await pipeline.aclose()
    assert rec.names() == ["audio_ready", "audio_error", "audio_ready", "audio_ready"]
    assert rec.indexes() == [0, 1, 2, 3]
    error = rec.events[1][1]
    assert error["sentence"] == error["display"] == "This one will FAIL."
    assert "HTTP 500" in error["error"] and "synthesis exploded" in error["error"]


async def test_concurrency_is_bounded_and_order_kept(server: TTSServer) -> None:
    server.delay_s = 0.05
    pipeline = make_pipeline({"cleaners": [], "concurrency": 2,
                              "tts": {"xtts": {"base_url": server.url}}})
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    try:
        for i in range(6):
            session.add(f"Sentence {i}.")
        await session.finish()
    finally:
        await pipeline.aclose()
    assert server.max_in_flight == 2
    assert rec.indexes() == list(range(6))
    assert [e["sentence"] for _, e in rec.events] == [f"Sentence {i}." for i in range(6)]


async def test_aclose_cancels_pending_requests(server: TTSServer) -> None:
    server.delay_s = 0.2
    pipeline = make_pipeline({"cleaners": [], "concurrency": 1,
                              "tts": {"piper": {"base_url": server.url}}})
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    try:
        for i in range(10):
            session.add(f"Sentence {i}.")
        await asyncio.sleep(0.3)
        await session.aclose()
        await asyncio.sleep(0.3)
    finally:
        await pipeline.aclose()
    assert len(rec.events) <= 2
    assert len(server.requests) <= 3  # the rest never left this process
