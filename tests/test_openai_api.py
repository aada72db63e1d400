"""The OpenAI API (/v1), driven by clients no one here wrote: the official ``openai`` SDK
(async and sync) and LiteLLM, against the real app and the scripted LLM over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.speech import formats
from companion_engine.testing import LLMTestServer, Script
from tests.chat_helpers import llm_profile
from tests.conftest import OWN_CARDS, MakeClient

KEY = "sk-test-companion"


def project(root: Path, server: LLMTestServer, *, speech: bool = False,
            **profile: Any) -> dict[str, Any]:
    """Cards orion (with a lorebook) and nova, and a second profile 'terse'."""
    (root / "characters").mkdir(parents=True, exist_ok=True)
    shutil.copy(OWN_CARDS / "orion.v2.json", root / "characters" / "orion.json")
    shutil.copy(OWN_CARDS / "nova.v1.json", root / "characters" / "nova.json")
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    (root / "profiles" / "terse.yaml").write_text(json.dumps({
        **llm_profile(server), "character": "nova",
        "prompt": [{"system_prompt": {"text": "TERSE PROFILE for {{char}}.",
                                      "prefer_character": False}}, "history"],
        "speech": {"enabled": False}}))
    return {**llm_profile(server), "character": "orion",
            "speech": {"enabled": speech, "tts": "espeak", "cleaners": []}, **profile}


async def start(make_client: MakeClient, tmp_path: Path, server: LLMTestServer,
                config: dict[str, Any] | None = None, **kw: Any) -> TestClient:
    return await make_client(root=tmp_path, profile=project(tmp_path, server, **kw),
                             config=config or {})


#: The SDK clients a test made, closed after it on its own event loop (one left to the
#: garbage collector schedules its close on whatever loop runs then, a later test's, where
#: it fails: "Task exception was never retrieved ... Event loop is closed").
_sdk_clients: list[openai.AsyncOpenAI] = []


def sdk(client: TestClient, key: str = "none") -> openai.AsyncOpenAI:
    api = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key,
                             max_retries=0, timeout=30)
    _sdk_clients.append(api)
    return api


@pytest.fixture(autouse=True)
async def _close_sdk_clients() -> AsyncIterator[None]:
    yield
    while _sdk_clients:
        await _sdk_clients.pop().close()


def sent_messages(server: LLMTestServer) -> list[dict[str, str]]:
    return server.requests[-1].body["messages"]


async def test_non_streamed_completion_is_the_whole_companion(
        make_client: MakeClient, tmp_path: Path, llm_server: LLMTestServer) -> None:
    client = await start(make_client, tmp_path, llm_server)
    llm_server.push(Script(tokens=["<think>plan</think>", "The lamp", " is old."]))
    reply = await sdk(client).chat.completions.create(
        model="companion/orion", user="Kai", messages=[
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Tell me about the lighthouse lamp."}])
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == "companion/orion"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "The lamp is old."  # strip_think ran
    assert choice.finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    sent = sent_messages(llm_server)
    text = [m["content"] for m in sent]
    card = next(i for i, t in enumerate(text) if "lighthouse keeper" in t)
    mine = text.index("Answer in one sentence.")
    assert card < mine  # the client's system message comes after the card's
    assert "The lighthouse lamp is a Fresnel lens from 1889." in "\n".join(text)  # lorebook
    assert [m for m in sent if m["role"] != "system"][-3:] == [
        {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me about the lighthouse lamp."}]
    assert any("Kai" in t for t in text)  # `user` is the user's name


async def test_streamed_completion_chunks_and_usage(
        make_client: MakeClient, tmp_path: Path, llm_server: LLMTestServer) -> None:
    client = await start(make_client, tmp_path, llm_server)
    llm_server.push(Script(tokens=["Storms", " come", " at night."]))
    stream = await sdk(client).chat.completions.create(
        model="companion", messages=[{"role": "user", "content": "Weather?"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Storms come at night."
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "stop" and all(f is None for f in finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_sync_sdk_stream_and_not(make_client: MakeClient, tmp_path: Path,
                                       llm_server: LLMTestServer) -> None:
    client = await start(make_client, tmp_path, llm_server)
    base = str(client.make_url("/v1"))

    def talk() -> tuple[str, str]:
        with openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=30) as sync:
            whole = sync.chat.completions.create(
                model="companion", messages=[{"role": "user", "content": "one"}])
            parts = sync.chat.completions.create(
                model="companion", messages=[{"role": "user", "content": "two"}], stream=True)
            return (whole.choices[0].message.content or "",
                    "".join(c.choices[0].delta.content or "" for c in parts if c.choices))

    llm_server.push(Script(tokens=["First", " reply."]), Script(tokens=["Second", " reply."]))
    assert await asyncio.to_thread(talk) == ("First reply.", "Second reply.")


async def test_model_names_pick_the_companion(make_client: MakeClient, tmp_path: Path,
                                              llm_server: LLMTestServer) -> None:
    client = await start(make_client, tmp_path, llm_server)
    api = sdk(client)
    msg = [{"role": "user", "content": "hello"}]
    llm_server.push(*(Script(tokens=["ok"]) for _ in range(4)))
    await api.chat.completions.create(model="companion", messages=msg)
    assert any("lighthouse keeper" in m["content"] for m in sent_messages(llm_server))
    await api.chat.completions.create(model="companion/nova", messages=msg)
    assert any("radio host" in m["content"] for m in sent_messages(llm_server))
    await api.chat.completions.create(model="profile/terse/orion", messages=msg)
    assert sent_messages(llm_server)[0]["content"] == "TERSE PROFILE for Orion."
    await api.chat.completions.create(model="openai/other-model", messages=msg)
    assert llm_server.requests[-1].body["model"] == "other-model"
    for bad in ("companion/nobody", "profile/missing/orion", "companion/Bad"):
        with pytest.raises(openai.NotFoundError) as err:
            await api.chat.completions.create(model=bad, messages=msg)
        assert err.value.code == "model_not_found"


async def test_sampling_parameters_pass_through(make_client: MakeClient, tmp_path: Path,
                                                llm_server: LLMTestServer) -> None:
    client = await start(make_client, tmp_path, llm_server)
    await sdk(client).chat.completions.create(
        model="companion", messages=[{"role": "user", "content": "x"}], temperature=0.3,
        top_p=0.9, max_completion_tokens=42, stop=["\nUser:"], seed=7)
    body = llm_server.requests[-1].body
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"],
            body["seed"]) == (0.3, 0.9, 42, ["\nUser:"], 7)


async def test_audio_modality_speaks_the_reply(make_client: MakeClient, tmp_path: Path,
                                               llm_server: LLMTestServer) -> None:
    client = await start(make_client, tmp_path, llm_server, speech=True)
    api = sdk(client)
    msg = [{"role": "user", "content": "hello"}]
    llm_server.push(Script(tokens=["Come in out of the rain.", " The kettle is on."]))
    reply = await api.chat.completions.create(model="companion", messages=msg,
                                              modalities=["text", "audio"],
                                              audio={"voice": "alloy", "format": "wav"})
    audio = reply.choices[0].message.audio
    assert audio is not None and audio.id.startswith("audio_")
    assert audio.transcript == "Come in out of the rain. The kettle is on."
    with wave.open(io.BytesIO(base64.b64decode(audio.data))) as w:
        assert w.getnchannels() == 1 and w.getnframes() / w.getframerate() > 1.0
    llm_server.push(Script(tokens=["Come in out of the rain.", " The kettle is on."]))
    stream = await api.chat.completions.create(
        model="companion", messages=msg, stream=True, modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"})
    pieces = [c.choices[0].delta.audio async for c in stream
              if c.choices and c.choices[0].delta.audio is not None]
    assert [p.transcript for p in pieces] == ["Come in out of the rain.", "The kettle is on."]
    assert all(len(base64.b64decode(p.data or "")) % 2 == 0 for p in pieces)
    assert len({p.id for p in pieces}) == 1
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.create(model="companion", messages=msg,
                                          modalities=["text", "audio"],
                                          audio={"voice": "alloy", "format": "flac"})


async def test_models_voices_and_speech(make_client: MakeClient, tmp_path: Path,
                                        llm_server: LLMTestServer) -> None:
    client = await start(make_client, tmp_path, llm_server, speech=True)
    api = sdk(client)
    ids = [m.id for m in (await api.models.list()).data]
    assert ids[:3] == ["companion", "companion/nova", "companion/orion"]
    assert {"profile/default/orion", "profile/terse/nova", "openai/test-model"} <= set(ids)
    assert (await api.models.retrieve("companion/orion")).id == "companion/orion"
    with pytest.raises(openai.NotFoundError):
        await api.models.retrieve("companion/nobody")
    voices = await (await client.get("/v1/audio/voices")).json()
    assert "en-us" in voices["voices"]
    normal = await api.audio.speech.create(model="tts-1", voice="alloy", response_format="wav",
                                           input="The quick brown fox jumps over the dog.")
    fast = await api.audio.speech.create(model="tts-1", voice="en-us", response_format="wav",
                                         speed=2.0, input="The quick brown fox jumps over the dog.")

    def seconds(data: bytes) -> float:
        with wave.open(io.BytesIO(data)) as w:
            return w.getnframes() / w.getframerate()

    assert seconds(fast.content) < 0.75 * seconds(normal.content)
    pcm = await api.audio.speech.create(model="tts-1", voice="alloy", response_format="pcm",
                                        input="Hello there.")
    assert len(pcm.content) % 2 == 0 and not pcm.content.startswith(b"RIFF")
    if formats.unavailable("mp3") is None:
        mp3 = await api.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.")
        assert mp3.response.headers["content-type"] == "audio/mpeg"
    with pytest.raises(openai.UnprocessableEntityError):
        await api.audio.speech.create(model="tts-1", voice="no-such-voice", input="Hello.")
    with pytest.raises(openai.BadRequestError):
        await api.audio.speech.create(model="tts-1", voice="alloy", input="Hello.",
                                      response_format="flac")


async def test_error_types_the_sdk_raises(make_client: MakeClient, tmp_path: Path,
                                          llm_server: LLMTestServer) -> None:
    client = await start(make_client, tmp_path, llm_server,
                         config={"server": {"api_key": KEY},
                                 "rate_limit": {"requests": 3, "window_s": 60}})
    msg = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.AuthenticationError) as auth:
        await sdk(client, "wrong").chat.completions.create(model="companion", messages=msg)
    assert auth.value.code == "invalid_api_key"
    api = sdk(client, KEY)
    with pytest.raises(openai.UnprocessableEntityError):
        await api.chat.completions.create(model="companion", messages=msg, temperature=9)
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.create(model="companion", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.create(model="companion", messages=[
            {"role": "tool", "content": "42", "tool_call_id": "t"}])
    with pytest.raises(openai.RateLimitError):
        for _ in range(5):
            await api.chat.completions.create(model="companion", messages=msg)


async def test_provider_offline_is_a_503_or_a_stream_error(
        make_client: MakeClient, tmp_path: Path, llm_server: LLMTestServer) -> None:
    from companion_engine.testing import free_port

    client = await start(make_client, tmp_path, llm_server,
                         llm={"model": "openai/test-model", "timeout_s": 5,
                              "api_base": f"http://127.0.0.1:{free_port()}/v1"})
    api = sdk(client)
    msg = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.InternalServerError) as err:
        await api.chat.completions.create(model="companion", messages=msg)
    assert err.value.status_code == 503 and "cannot reach" in err.value.message
    with pytest.raises(openai.APIError, match="cannot reach"):
        async for _ in await api.chat.completions.create(model="companion", messages=msg,
                                                         stream=True):
            pass


async def test_disconnect_closes_the_provider_stream(make_client: MakeClient, tmp_path: Path,
                                                     llm_server: LLMTestServer) -> None:
    client = await start(make_client, tmp_path, llm_server)
    llm_server.push(Script(tokens=[f" t{i}" for i in range(100)], delay_s=0.05))
    resp = await client.post("/v1/chat/completions", json={
        "model": "companion", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    await resp.content.readline()
    resp.close()
    request = llm_server.requests[-1]
    await request.wait_closed(5)
    assert not request.completed


async def test_litellm_as_a_client(make_client: MakeClient, tmp_path: Path,
                                   llm_server: LLMTestServer) -> None:
    import litellm

    client = await start(make_client, tmp_path, llm_server)
    base = str(client.make_url("/v1"))
    llm_server.push(Script(tokens=["Through", " LiteLLM."]), Script(tokens=["Streamed."]))
    whole = await litellm.acompletion(model="openai/companion/orion", api_base=base,
                                      api_key="none",
                                      messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == "Through LiteLLM."
    parts = await litellm.acompletion(model="openai/companion/orion", api_base=base,
                                      api_key="none", stream=True,
                                      messages=[{"role": "user", "content": "hi"}])
    text = "".join([c.choices[0].delta.content or "" async for c in parts])
    assert text == "Streamed."


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(body=st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                     st.sampled_from(["model", "messages", "role", "content", "stream",
                                      "audio", "modalities", "voice", "input", "x"]),
                     kids, max_size=5), max_leaves=20).map(
        lambda v: json.dumps(v).encode())))
async def test_garbage_gets_an_openai_shaped_4xx(make_client: MakeClient, tmp_path: Path,
                                                 llm_server: LLMTestServer,
                                                 body: bytes) -> None:
    client = await _garbage_client(make_client, tmp_path, llm_server)
    for path in ("/v1/chat/completions", "/v1/audio/speech"):
        resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        if resp.status == 200:
            continue  # garbage that happens to be a valid request
        assert 400 <= resp.status < 500, (path, body, await resp.text())
        error = (await resp.json())["error"]
        assert isinstance(error["message"], str) and error["type"]


_GARBAGE: dict[str, TestClient] = {}


async def _garbage_client(make_client: MakeClient, tmp_path: Path,
                          server: LLMTestServer) -> TestClient:
    """One app for every hypothesis example of the garbage test (per event loop)."""
    loop = id(asyncio.get_running_loop())
    key = f"{loop}"
    if key not in _GARBAGE:
        _GARBAGE.clear()
        _GARBAGE[key] = await start(make_client, tmp_path, server)
    return _GARBAGE[key]
