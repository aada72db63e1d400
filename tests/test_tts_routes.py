"""``GET /api/tts/voices`` and ``POST /api/tts`` through the real app."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.routes.tts import MAX_TTS_CHARS, TTSRequest
from tests.tts_helpers import TTSServer, running_tts_server

#: Only the speech stages matter here; the prompt and output stages belong to other tests.
BARE = {"prompt": [], "output": []}
ESPEAK = {**BARE, "speech": {"enabled": True, "tts": {"espeak": {"voice": "en-us", "rate": 175}}}}


@pytest.fixture(scope="module")
def server() -> Iterator[TTSServer]:
    with running_tts_server() as s:
        yield s


def frames_and_rate(data: bytes) -> tuple[int, int]:
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getnframes(), w.getframerate()


async def test_speak_returns_wav_of_the_stated_length(make_client: Any) -> None:
    client = await make_client(profile=ESPEAK)
    resp = await client.post("/api/tts", json={"text": "**Hello** there, friend! 😊"})
    assert resp.status == 200
    assert resp.content_type == "audio/wav"
    data = await resp.read()
    frames, rate = frames_and_rate(data)
    assert rate == 22050 == int(resp.headers["X-Sample-Rate"])
    assert int(resp.headers["X-Audio-Duration-Ms"]) == round(frames * 1000 / rate) > 500


async def test_voice_choice_and_unknown_voice(make_client: Any) -> None:
    client = await make_client(profile=ESPEAK)
    resp = await client.post("/api/tts", json={"text": "Bonjour à tous.", "voice": "fr-fr"})
    assert resp.status == 200
    resp = await client.post("/api/tts", json={"text": "Hello.", "voice": "no-such-voice"})
    assert resp.status == 422
    assert "unknown espeak voice 'no-such-voice'" in (await resp.json())["error"]


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"text": ""}, 422, "text"),
    ({"text": "   \n "}, 422, "blank"),
    ({"text": "x" * (MAX_TTS_CHARS + 1)}, 422, "text"),
    ({"text": 42}, 422, "text"),
    ({}, 422, "text"),
    ({"text": "hi", "speed": 2}, 422, "speed"),
    ({"text": "hi", "voice": "../../etc/passwd"}, 422, "voice"),
    ({"text": "*waves* 😊 🎉 ..."}, 422, "nothing to speak"),
])
async def test_bad_requests_get_a_clear_4xx(make_client: Any, body: dict[str, Any], status: int,
                                            needle: str) -> None:
    client = await make_client(profile=ESPEAK)
    resp = await client.post("/api/tts", json=body)
    assert resp.status == status
    payload = await resp.json()
    assert payload["success"] is False
    assert needle in (payload["error"] + str(payload["detail"]))


async def test_malformed_json_and_huge_bodies(make_client: Any) -> None:
    client = await make_client(profile=ESPEAK)
    resp = await client.post("/api/tts", data=b'{"text": "hi"',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert "malformed JSON" in (await resp.json())["error"]
    resp = await client.post("/api/tts", data=b'{"text": "' + b"a" * 2_000_000 + b'"}',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413


async def test_voices_of_espeak(make_client: Any) -> None:
    client = await make_client(profile=ESPEAK)
    resp = await client.get("/api/tts/voices")
    assert resp.status == 200
    data = await resp.json()
    assert data["backend"] == "espeak" and data["speaks"] is True
    assert "en-us" in {v["id"] for v in data["voices"]}


async def test_text_only_profile_refuses_to_speak(make_client: Any) -> None:
    client = await make_client(profile={**BARE, "speech": {"tts": "none"}})
    resp = await client.post("/api/tts", json={"text": "Hello."})
    assert resp.status == 409
    assert "speech.tts is 'none'" in (await resp.json())["error"]
    data = await (await client.get("/api/tts/voices")).json()
    assert data == {"backend": "none", "speaks": False, "voices": []}


async def test_http_backend_failures_are_502(make_client: Any, server: TTSServer) -> None:
    server.reset()
    client = await make_client(profile={**BARE, "speech": {"tts": {"piper": {
        "base_url": server.url}}}})
    ok = await client.post("/api/tts", json={"text": "Piper here.", "voice": "en_US-lessac"})
    assert ok.status == 200 and frames_and_rate(await ok.read())[0] > 0
    assert server.requests[-1] == ("piper", {"text": "Piper here.", "voice": "en_US-lessac"})
    bad = await client.post("/api/tts", json={"text": "FAIL please"})
    assert bad.status == 502
    assert "piper" in (await bad.json())["error"]
    voices = await (await client.get("/api/tts/voices")).json()
    assert [v["id"] for v in voices["voices"]] == ["en_US-lessac-medium", "en_US-libritts-high"]
    dead = await make_client(profile={**BARE, "speech": {"tts": {"xtts": {
        "base_url": "http://127.0.0.1:9", "timeout_s": 2}}}})
    resp = await dead.get("/api/tts/voices")
    assert resp.status == 502 and "unreachable" in (await resp.json())["error"]


async def test_routes_are_in_openapi(make_client: Any) -> None:
    client = await make_client(profile=ESPEAK)
    spec = await (await client.get("/openapi.json")).json()
    assert "audio/wav" in spec["paths"]["/api/tts"]["post"]["responses"]["200"]["content"]
    assert "/api/tts/voices" in spec["paths"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["text", "voice", "other"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=50),
                                 st.lists(st.text(max_size=3), max_size=2))))
def test_request_model_accepts_or_rejects_never_crashes(body: dict[str, Any]) -> None:
    try:
        req = TTSRequest.model_validate(body)
    except ValueError:
        return
    assert req.text.strip() and len(req.text) <= MAX_TTS_CHARS
    assert req.voice is None or ".." not in req.voice
