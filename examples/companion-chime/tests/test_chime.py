"""Chime in the real engine: the requested voice, voices, unknown voices, and mute."""

import base64
import json
import wave
from io import BytesIO

from companion_engine.testing import Script

import companion_chime

PLUGINS = [companion_chime]


def sse(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.split("\n\n"):
        lines = block.split("\n")
        if len(lines) == 2 and lines[0].startswith("event: "):
            events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


def profile(llm_server, **options) -> dict:
    return {"llm": {"model": "openai/test", "api_base": llm_server.openai_base},
            "speech": {"enabled": True, "splitter": "sentence", "cleaners": [],
                       "tts": {"chime": options}}}


async def chat(client, **body) -> list[tuple[str, dict]]:
    resp = await client.post("/api/chat/stream", json={"message": "hi", **body})
    assert resp.status == 200
    return sse(await resp.text())


async def test_each_sentence_in_the_requested_voice(companion_client, llm_server):
    llm_server.push(Script(tokens=["Hello there, friend.", " How are you today?"]),
                    Script(tokens=["Hello there, friend."]))
    client = await companion_client(profile=profile(llm_server), plugins=PLUGINS)
    fifth = [d for n, d in await chat(client, voice="fifth") if n == "audio_ready"]
    major = [d for n, d in await chat(client) if n == "audio_ready"]
    assert [a["index"] for a in fifth] == [0, 1]
    assert fifth[0]["audio"] != major[0]["audio"]  # another chord, the same length
    with wave.open(BytesIO(base64.b64decode(fifth[0]["audio"]))) as w:
        assert w.getnframes() == 16000 * fifth[0]["duration_ms"] // 1000


async def test_voices_and_an_unknown_voice(companion_client, llm_server):
    llm_server.push(Script(tokens=["Hello there, friend."]))
    client = await companion_client(profile=profile(llm_server), plugins=PLUGINS)
    listed = await (await client.get("/api/tts/voices")).json()
    assert listed["speaks"] is True
    assert [v["name"] for v in listed["voices"]] == ["major", "minor", "fifth"]
    events = await chat(client, voice="tenor")
    assert [n for n, _ in events][-1] == "done"
    assert any(n == "audio_error" and "no voice 'tenor'" in d["error"] for n, d in events)
    assert (await client.post("/api/tts", json={"text": "Hi.", "voice": "tenor"})).status == 422


async def test_mute_makes_a_text_only_backend(companion_client, llm_server):
    llm_server.push(Script(tokens=["Hello there, friend.", " Quiet now."]))
    client = await companion_client(profile=profile(llm_server, mute=True), plugins=PLUGINS)
    events = await chat(client)
    names = [n for n, _ in events]
    assert "audio_ready" not in names and "audio_error" not in names and names[-1] == "done"
    assert (await (await client.get("/api/tts/voices")).json())["speaks"] is False
    assert (await client.post("/api/tts", json={"text": "Hi."})).status == 409
