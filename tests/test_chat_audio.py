"""Audio options of a chat turn over HTTP: formats, chunked audio, voices, garbage, bounds."""

from __future__ import annotations

import base64
import io

import pytest

from companion_engine.testing import LLMTestServer, Script
from tests.chat_helpers import chat_events, llm_profile, names, streamed_text
from tests.conftest import MakeClient

av = pytest.importorskip("av", reason="PyAV is not installed (pip install '.[audio]')")


def speech_profile(server: LLMTestServer, **speech: object) -> dict[str, object]:
    return {**llm_profile(server), "speech": {"enabled": True, "tts": "espeak",
                                              "cleaners": ["actions", "markdown"], **speech}}


def decoded_ms(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as c:
        n = sum(f.samples for f in c.decode(c.streams.audio[0]))
        return n * 1000 / c.streams.audio[0].rate


async def test_opus_chunked_turn_with_two_voices(
        make_client: MakeClient, llm_server: LLMTestServer) -> None:
    client = await make_client(profile=speech_profile(
        llm_server, voices={"dialogue": "en-us", "narration": "en-gb"}))
    tokens = ['*She', ' smiles.*', ' "Hello', ' there,', ' friend."', ' *She', ' waves.*']
    llm_server.push(Script(tokens=tokens))
    events = await chat_events(client, {"message": "hi", "audio_format": "opus",
                                        "chunked_audio": True})
    assert names(events)[-1] == "done" and streamed_text(events) == "".join(tokens)
    chunks = [d for n, d in events if n == "audio_chunk"]
    assert "audio_ready" not in names(events)
    assert [(c["role"], c["voice"]) for c in chunks] == [
        ("narration", "en-gb"), ("dialogue", "en-us"), ("narration", "en-gb")]
    assert [c["sentence"] for c in chunks] == ["She smiles.", "Hello there, friend.",
                                               "She waves."]
    for c in chunks:
        assert c["format"] == "opus" and c["final"] and c["part"] == 0
        assert decoded_ms(base64.b64decode(c["audio"])) == pytest.approx(
            c["duration_ms"], rel=0.05)


async def test_mp3_per_profile(make_client: MakeClient, llm_server: LLMTestServer) -> None:
    client = await make_client(profile=speech_profile(llm_server, audio_format="mp3"))
    llm_server.push(Script(tokens=["A first sentence to say.", " And a second one."]))
    events = await chat_events(client, {"message": "hi"})
    audio = [d for n, d in events if n == "audio_ready"]
    assert [a["format"] for a in audio] == ["mp3", "mp3"]
    assert all(a["voice"] == "en-us" and a["role"] == "dialogue" for a in audio)


@pytest.mark.parametrize("bad", [{"audio_format": "flac"}, {"audio_format": 3},
                                 {"chunked_audio": "maybe"}, {"voice": "../../etc/passwd"},
                                 {"voice": "x" * 101}, {"audio_format": ["opus"]}])
async def test_garbage_audio_options_are_422(
        make_client: MakeClient, llm_server: LLMTestServer, bad: dict[str, object]) -> None:
    client = await make_client(profile=speech_profile(llm_server))
    resp = await client.post("/api/chat/stream", json={"message": "hi", **bad})
    assert resp.status == 422
    body = await resp.json()
    assert body["success"] is False and body["detail"]
    assert llm_server.requests == []  # nothing reached the model


async def test_api_tts_audio_format(make_client: MakeClient, llm_server: LLMTestServer) -> None:
    client = await make_client(profile=speech_profile(llm_server, lexicon={"GIF": "jif"}))
    resp = await client.post("/api/tts", json={"text": "Say GIF clearly.", "audio_format": "opus"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/ogg; codecs=opus"
    data = await resp.read()
    assert decoded_ms(data) == pytest.approx(int(resp.headers["X-Audio-Duration-Ms"]), rel=0.05)
    resp = await client.post("/api/tts", json={"text": "Raw please.", "audio_format": "pcm16"})
    assert resp.headers["Content-Type"].startswith("audio/L16; rate=22050")
    assert len(await resp.read()) / 44.1 == pytest.approx(
        int(resp.headers["X-Audio-Duration-Ms"]), abs=2)
    for bad in ("flac", "", None, 5):
        resp = await client.post("/api/tts", json={"text": "x y", "audio_format": bad})
        assert resp.status == (200 if bad is None else 422), bad


async def test_huge_reply_with_tts_on_speaks_a_bounded_backlog_and_the_text_goes_on(
        make_client: MakeClient, llm_server: LLMTestServer) -> None:
    """Issue 19.3, the speech half: a provider that streams a runaway reply with TTS on.
    The text arrives whole; speech past ``max_backlog_chars`` is refused per sentence
    (``audio_error``) instead of queueing without end."""
    profile = speech_profile(llm_server, max_backlog_chars=1000)
    # past the engine's default cap on a reply (16 characters per max_tokens): raised here,
    # since what is under test is the speech backlog (the cap: test_chat_limits.py)
    profile["llm"] = {**profile["llm"], "max_reply_chars": 100_000}  # type: ignore[dict-item]
    client = await make_client(profile=profile)
    sentence = " This reply goes on and on without ever stopping for breath."
    tokens = [w + " " for w in (sentence * 600).split(" ") if w]  # ~36,000 characters
    llm_server.push(Script(tokens=tokens))
    events = await chat_events(client, {"message": "hi"})
    assert names(events)[-1] == "done"
    assert streamed_text(events) == "".join(tokens)
    sentences = [d["sentence"] for n, d in events if n == "content" and d.get("sentence_complete")]
    audio = [(n, d) for n, d in events if n in ("audio_ready", "audio_error")]
    assert [d["index"] for _, d in audio] == list(range(len(sentences)))
    spoken = [d for n, d in audio if n == "audio_ready"]
    refused = [d for n, d in audio if n == "audio_error"]
    assert len(refused) > len(sentences) // 2
    assert all("backlog full" in d["error"] for d in refused)
    assert len(spoken) >= 15  # the first 1000 characters, and more as they were sent
