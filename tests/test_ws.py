"""``GET /api/ws``: speech in, turns, audio out at playback speed, barge-in, auth, caps, garbage.

The client is the ``websockets`` library; the server is the real app on a real socket with
the scripted LLM and speech-to-text server, Silero VAD and the embedded espeak-ng voice.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from companion_engine.talk.protocol import json_schema
from companion_engine.testing import LLMTestServer, Script, TranscriptScript
from tests.chat_helpers import llm_profile
from tests.talk_helpers import Recording
from tests.ws_helpers import WS, open_ws

pytest.importorskip("onnxruntime", reason="the WebSocket's VAD needs onnxruntime (talk extra)")

REPO = Path(__file__).resolve().parents[1]

WEATHER = ("The sky is clear and blue today. The sun will shine all afternoon. "
           "A light breeze comes from the west. Tonight it will be cool and calm.")
SENTENCES = ["The sky is clear and blue today.", "The sun will shine all afternoon.",
             "A light breeze comes from the west.", "Tonight it will be cool and calm."]


def tokens(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


@pytest.fixture(scope="module")
def question() -> Recording:
    return Recording().silence(300).say("What is the weather like today?").silence(700)


@pytest.fixture(scope="module")
def stop_speech() -> Recording:
    return Recording(seed=3).say("Wait, stop, please.").silence(700)


@pytest.fixture(scope="module")
def blip() -> Recording:
    return Recording(seed=4).say("Hello", max_ms=100).silence(500)


def talking(server: LLMTestServer, **speech: Any) -> dict[str, Any]:
    profile = llm_profile(server)
    profile["speech"] = {"enabled": True, "tts": {"espeak": {"rate": 220}},
                         "stt": {"openai": {"base_url": server.stt_base}},
                         "vad": {"silero": {"min_silence_ms": 400}}, **speech}
    return profile


async def session(companion_client: Any, server: LLMTestServer, *, config: Any = None,
                  **speech: Any) -> tuple[Any, WS]:
    client = await companion_client(profile=talking(server, **speech), config=config or {})
    ws = await open_ws(client)
    return client, ws


async def stored(client: Any, conversation_id: str) -> list[dict[str, Any]]:
    body = await (await client.get(f"/api/conversations/{conversation_id}")).json()
    return body["data"]["messages"]


def audio_of(ws: WS, index: int) -> bytes:
    """The binary frames between ``audio_start`` and ``audio_end`` of sentence ``index``."""
    out, inside = b"", False
    for item in ws.log:
        if item.type == "audio_start":
            inside = item.data["index"] == index
        elif item.type == "audio_end":
            inside = False
        elif item.type == "binary" and inside:
            out += item.data
    return out


# --- turns ---------------------------------------------------------------------------------


async def test_text_turn_streams_text_then_paced_audio_frames(companion_client,
                                                              llm_server) -> None:
    llm_server.push(Script(tokens=tokens("Hello there. Nice to meet you.")))
    client, ws = await session(companion_client, llm_server)
    ready = await ws.start(conversation_id="ws-text", user_name="Alex")
    assert ready["conversation_id"] == "ws-text" and ready["listening"] is True
    assert ready["stt"] == "openai" and ready["vad"] == "silero" and ready["sample_rate"] == 16000
    await ws.send("text", text="Hi!")
    done = await ws.until("done")
    kinds = ws.types()
    assert kinds.index("provider_connected") < kinds.index("content") < kinds.index(
        "audio_start") < kinds.index("audio_end") < kinds.index("done")
    starts = [r.data for r in ws.log if r.type == "audio_start"]
    assert [s["index"] for s in starts] == [0, 1]
    for start in starts:
        pcm = audio_of(ws, start["index"])
        assert start["format"] == "pcm16" and start["sample_rate"] == 22050
        assert len(pcm) == start["bytes"] > 0
        assert abs(len(pcm) / 2 / 22050 * 1000 - start["duration_ms"]) < 2
    assert done.data["full_content"] == "Hello there. Nice to meet you."
    assert done.data["timings"]["stt_ms"] is None  # typed, not spoken
    messages = await stored(client, "ws-text")
    assert [(m["role"], m["content"], m["status"]) for m in messages[-2:]] == [
        ("user", "Hi!", "complete"), ("assistant", "Hello there. Nice to meet you.",
                                      "complete")]
    await ws.conn.close()


async def test_spoken_turn_end_of_speech_starts_it(companion_client, llm_server,
                                                   question: Recording) -> None:
    llm_server.push_transcript(TranscriptScript(text="What is the weather like today?"))
    llm_server.push(Script(tokens=tokens("Sunny.")))
    client, ws = await session(companion_client, llm_server)
    ready = await ws.start()
    await ws.audio(question.pcm())
    speech_start = await ws.until("vad", event="speech_start")
    end = await ws.until("vad", event="speech_end")
    (seg_start, seg_end), = question.segments
    assert abs(speech_start.data["at_ms"] - seg_start) <= 100
    assert abs(end.data["at_ms"] - seg_end) <= 200 and end.data["start_ms"] == speech_start.data[
        "at_ms"]
    transcript = await ws.until("transcript")
    assert transcript.data["text"] == "What is the weather like today?"
    assert transcript.data["utterance"] == speech_start.data["utterance"]
    done = await ws.until("done")
    assert done.data["full_content"] == "Sunny."
    assert done.data["timings"]["stt_ms"] is not None
    assert done.data["timings"]["speech_to_audio_ms"] is not None
    # The recogniser got the utterance, padded, as 16 kHz mono WAV.
    upload = llm_server.transcriptions[-1].file
    seconds = (len(upload) - 44) / 2 / 16000
    spoken = (seg_end - seg_start) / 1000
    assert spoken < seconds <= spoken + 0.65
    messages = await stored(client, ready["conversation_id"])
    assert [(m["role"], m["content"]) for m in messages[-2:]] == [
        ("user", "What is the weather like today?"), ("assistant", "Sunny.")]
    await ws.conn.close()


async def test_barge_in_stops_everything_and_stores_only_what_was_sent(
        companion_client, llm_server, stop_speech: Recording) -> None:
    # A reply of four sentences, still streaming (slowly) when the user talks over it.
    llm_server.push(Script(tokens=tokens(WEATHER) + ["More"] * 200, delay_s=0.03))
    llm_server.push_transcript(TranscriptScript(text="Wait, stop, please."))
    llm_server.push(Script(tokens=tokens("Sorry!")))
    client, ws = await session(companion_client, llm_server)
    ready = await ws.start()
    await ws.send("text", text="How is the weather?")
    first = await ws.until("audio_start", index=0)
    await ws.until("binary")  # the companion is speaking
    llm = llm_server.requests[-1]
    await ws.audio(stop_speech.pcm(), realtime=0.5)
    interrupted = await ws.until("interrupted")
    assert interrupted.data["reason"] == "barge_in"
    last = interrupted.data["last_index"]
    sent = [r.data["index"] for r in ws.since(first) if r.type == "audio_start"]
    assert last == max([0, *sent])
    # Not one audio frame after the interruption; nothing of a later sentence, ever.
    await ws.until("done")  # the answer to "Wait, stop, please."
    after = ws.since(interrupted)
    second_turn = next(i for i, r in enumerate(after) if r.type == "provider_connected")
    assert not [r for r in after[:second_turn] if r.type in ("binary", "audio_start")]
    assert llm.closed_at is not None and not llm.completed, "the LLM request was cut"
    heard = " ".join(SENTENCES[:last + 1])
    assert interrupted.data["content"] == heard
    messages = await stored(client, ready["conversation_id"])
    reply = next(m for m in messages if m["role"] == "assistant" and m["status"] ==
                 "interrupted")
    assert reply["content"] == heard
    assert "More" not in reply["content"] and SENTENCES[last + 1] not in reply["content"]
    assert [m["content"] for m in messages[-2:]] == ["Wait, stop, please.", "Sorry!"]
    vad = [r.data["event"] for r in ws.log if r.type == "vad"]
    assert vad[:2] == ["onset", "speech_start"]
    await ws.conn.close()


async def test_a_false_start_does_not_interrupt(companion_client, llm_server,
                                                blip: Recording) -> None:
    llm_server.push(Script(tokens=tokens(WEATHER[:66])))  # two sentences
    client, ws = await session(companion_client, llm_server,
                               vad={"silero": {"min_speech_ms": 250, "min_silence_ms": 400}})
    ready = await ws.start()
    await ws.send("text", text="Weather?")
    await ws.until("audio_start", index=0)
    await ws.until("binary")
    await ws.audio(blip.pcm(), realtime=0.5)
    done = await ws.until("done")
    events = [r.data["event"] for r in ws.log if r.type == "vad"]
    assert events == ["onset", "false_start"]
    assert "interrupted" not in ws.types()
    assert done.data["full_content"] == " ".join(SENTENCES[:2])
    messages = await stored(client, ready["conversation_id"])
    assert (messages[-1]["content"], messages[-1]["status"]) == (done.data["full_content"],
                                                                 "complete")
    assert llm_server.transcriptions == []  # a false start is never transcribed
    await ws.conn.close()


async def test_interrupt_and_a_new_text_stop_the_reply(companion_client, llm_server) -> None:
    llm_server.push(Script(tokens=tokens(WEATHER), delay_s=0.01),
                    Script(tokens=tokens(WEATHER), delay_s=0.01),
                    Script(tokens=tokens("Okay.")))
    client, ws = await session(companion_client, llm_server)
    ready = await ws.start()
    await ws.send("text", text="Weather?")
    await ws.until("binary")
    await ws.send("interrupt")
    first = await ws.until("interrupted")
    assert first.data["reason"] == "interrupt" and first.data["last_index"] == 0
    await ws.send("text", text="Again?")
    await ws.until("binary")
    await ws.send("text", text="Never mind.")
    second = await ws.until("interrupted")
    assert second.data["reason"] == "text"
    await ws.until("done")
    messages = await stored(client, ready["conversation_id"])
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "Weather?", "complete"), ("assistant", SENTENCES[0], "interrupted"),
        ("user", "Again?", "complete"), ("assistant", second.data["content"], "interrupted"),
        ("user", "Never mind.", "complete"), ("assistant", "Okay.", "complete")]
    await ws.conn.close()


async def test_events_mode_and_text_only_sessions(companion_client, llm_server) -> None:
    llm_server.push(Script(tokens=tokens("One. Two.")), Script(tokens=tokens("Three.")))
    _client, ws = await session(companion_client, llm_server)
    await ws.start(audio="events")
    await ws.send("text", text="Count.")
    await ws.until("done")
    ready = [r.data for r in ws.log if r.type == "audio_ready"]
    assert [r["index"] for r in ready] == [0, 1] and ready[0]["format"] == "wav"
    assert "binary" not in ws.types()
    await ws.send("config", enable_tts=False)
    await ws.send("text", text="More.")
    done = await ws.until("done", full_content="Three.")
    assert not [r for r in ws.since(done) if r.type.startswith("audio")]
    await ws.conn.close()


async def test_chunked_audio_streams_a_sentence_as_it_is_made(companion_client,
                                                             llm_server) -> None:
    pytest.importorskip("piper", reason="chunked synthesis needs piper_local (extra [piper])")
    long_first = ("The old lighthouse keeper walked up the winding stairs to light the great "
                  "lamp above the sea.")
    llm_server.push(Script(tokens=tokens(long_first)))
    _client, ws = await session(companion_client, llm_server, chunked_audio=True,
                               tts={"piper_local": {"voice": "en_US-joe-medium"}},
                               config={"server": {"websocket": {"audio_lead_ms": 10_000}}})
    await ws.start()
    await ws.send("text", text="A story.")
    await ws.until("done")
    starts = [r.data for r in ws.log if r.type == "audio_start"]
    ends = [r.data for r in ws.log if r.type == "audio_end"]
    assert [s["index"] for s in starts] == [0] and [e["index"] for e in ends] == [0]
    assert starts[0]["bytes"] is None  # sent in parts: the length is not known up front
    pcm = audio_of(ws, 0)
    frames = [r for r in ws.log if r.type == "binary"]
    assert len(pcm) > 22050 and len(frames) > 10  # seconds of audio, many frames
    assert "audio_chunk" not in ws.types()  # frames mode turns the parts into frames
    await ws.conn.close()


async def test_speech_without_stt_still_interrupts(companion_client, llm_server,
                                                   stop_speech: Recording) -> None:
    llm_server.push(Script(tokens=tokens(WEATHER), delay_s=0.01))
    _client, ws = await session(companion_client, llm_server, stt="none")
    ready = await ws.start()
    assert ready["listening"] is False
    await ws.send("text", text="Weather?")
    await ws.until("binary")
    await ws.audio(stop_speech.pcm())
    await ws.until("interrupted")
    error = await ws.until("error")
    assert error.data["type"] == "stt_unavailable" and "speech.stt is 'none'" in error.data[
        "error"]
    await ws.conn.close()


async def test_partial_transcripts_while_speaking(companion_client, llm_server) -> None:
    rec = (Recording().silence(200).say("I would like a cup of tea, please, and a biscuit.")
           .silence(700))
    llm_server.default_transcript = TranscriptScript(text="I would like")
    llm_server.push(Script(tokens=tokens("Coming.")))
    _client, ws = await session(companion_client, llm_server)
    await ws.start(partial_transcripts_ms=500)
    await ws.audio(rec.pcm(), realtime=0.3)
    final = await ws.until("transcript")
    partials = [r for r in ws.log if r.type == "transcript_partial"]
    assert partials and all(p.data["utterance"] == final.data["utterance"] for p in partials)
    assert ws.log.index(partials[-1]) < ws.log.index(final)
    await ws.until("done")
    await ws.conn.close()


async def test_a_pause_mid_sentence_joins_the_two_utterances(companion_client,
                                                             llm_server) -> None:
    first = Recording().silence(200).say("I would like").silence(650)
    second = Recording(seed=6).say("a cup of tea.").silence(700)
    llm_server.push_transcript(TranscriptScript(text="I would like", delay_s=0.4),
                               TranscriptScript(text="a cup of tea."))
    llm_server.push(Script(tokens=tokens("Here you are.")))
    client, ws = await session(companion_client, llm_server)
    ready = await ws.start()
    await ws.audio(first.pcm())
    await ws.until("vad", event="speech_end")
    await ws.audio(second.pcm())  # before the first transcript is back
    await ws.until("done")
    assert [r.data["text"] for r in ws.log if r.type == "transcript"] == [
        "I would like", "a cup of tea."]
    assert llm_server.requests[-1].body["messages"][-1]["content"] == "I would like a cup of tea."
    messages = await stored(client, ready["conversation_id"])
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "I would like a cup of tea."]
    await ws.conn.close()


async def test_a_client_that_leaves_mid_reply_keeps_only_what_it_was_sent(
        companion_client, llm_server) -> None:
    llm_server.push(Script(tokens=tokens(WEATHER) + ["More"] * 100, delay_s=0.03))
    client, ws = await session(companion_client, llm_server)
    ready = await ws.start()
    await ws.send("text", text="Weather?")
    await ws.until("audio_start", index=0)
    await ws.until("binary")
    llm = llm_server.requests[-1]
    await ws.conn.close()
    await llm.wait_closed(10)
    assert not llm.completed
    for _ in range(100):  # the runner stores the reply once it saw the client go
        messages = await stored(client, ready["conversation_id"])
        if messages[-1]["role"] == "assistant":
            break
        await asyncio.sleep(0.05)
    reply = messages[-1]
    assert reply["status"] == "interrupted"
    assert reply["content"] in (SENTENCES[0], " ".join(SENTENCES[:2]))


async def test_a_reload_moves_the_microphone_to_the_new_pipeline(
        companion_client, llm_server, companion_config, question: Recording) -> None:
    import yaml

    from companion_engine.keys import ENGINE, TALK_SESSIONS

    cfg = companion_config(profile=talking(llm_server))
    client = await companion_client(cfg)
    engine = client.server.app[ENGINE]
    ws = await open_ws(client)
    await ws.start()
    await ws.audio(question.pcm())
    await ws.until("vad", event="speech_end")
    old = engine.pipeline
    profile_path = cfg.path("profiles") / "default.yaml"
    profile = yaml.safe_load(profile_path.read_text())
    profile["speech"]["vad"] = {"webrtcvad": {"min_silence_ms": 400}}
    profile_path.write_text(yaml.safe_dump(profile))
    resp = await client.post("/-/reload")
    assert resp.status == 200, await resp.text()
    assert engine.pipeline is not old and not old.closed  # the session still holds it
    await ws.audio(question.pcm())
    await ws.until("vad", event="speech_end", utterance=2)
    (session,) = client.server.app[TALK_SESSIONS]
    assert session._listener_pipeline is engine.pipeline
    assert session._listener.vad.name == "webrtcvad"
    for _ in range(100):
        if old.closed:
            break
        await asyncio.sleep(0.02)
    assert old.closed, "the old pipeline is released once no session or turn holds it"
    await ws.conn.close()


# --- security and caps ---------------------------------------------------------------------

KEYED = {"server": {"api_key": "s3cret-key"}}


async def test_api_key_in_the_handshake_or_the_first_message(companion_client,
                                                             llm_server) -> None:
    client = await companion_client(profile=talking(llm_server), config=KEYED)
    ws = await open_ws(client, subprotocols=["companion.v1", "bearer.s3cret-key"])
    assert ws.conn.subprotocol == "companion.v1"  # the key is never echoed
    await ws.start()
    await ws.conn.close()
    ws = await open_ws(client, headers={"Authorization": "Bearer s3cret-key"})
    await ws.start()
    await ws.conn.close()
    ws = await open_ws(client)
    await ws.start(api_key="s3cret-key")
    await ws.conn.close()
    ws = await open_ws(client)
    await ws.send("start", api_key="wrong")
    assert await ws.closed() == (4001, "wrong API key")
    ws = await open_ws(client)
    await ws.send("start")
    assert await ws.closed() == (4001, "missing API key")
    with pytest.raises(InvalidStatus) as err:
        await open_ws(client, subprotocols=["companion.v1", "bearer.nope"])
    assert err.value.response.status_code == 401


async def test_cross_site_pages_cannot_open_a_session(companion_client, llm_server) -> None:
    client = await companion_client(profile=talking(llm_server))
    with pytest.raises(InvalidStatus) as err:
        await open_ws(client, headers={"Origin": "https://evil.example"})
    assert err.value.response.status_code == 403
    origin = str(client.server.make_url("/")).rstrip("/")
    ws = await open_ws(client, headers={"Origin": origin})  # the web app itself
    await ws.start()
    await ws.conn.close()
    resp = await client.get("/api/ws")
    assert resp.status == 400 and "WebSocket" in (await resp.json())["error"]


async def test_rate_limits_and_the_stream_cap_apply(companion_client, llm_server) -> None:
    llm_server.push(Script(tokens=tokens("Hi.")))
    client = await companion_client(profile=talking(llm_server), config={
        "rate_limit": {"requests": 3, "window_s": 600}, "server": {"max_streams_per_ip": 1}})
    ws = await open_ws(client)  # 1 token (the refused one below spends the 2nd)
    await ws.start()
    with pytest.raises(InvalidStatus) as err:
        await open_ws(client)  # one session per client at a time here
    assert err.value.response.status_code == 429
    await ws.send("text", text="One.")  # 3
    await ws.until("done")
    await ws.send("text", text="Two.")
    error = await ws.until("error")
    assert error.data["type"] == "rate_limited" and error.data["retry_after"]
    await ws.send("ping", id=7)
    assert (await ws.until("pong")).data == {"id": 7}  # the session goes on
    await ws.conn.close()


GARBAGE: list[tuple[Any, int, str]] = [
    ("not json", 1007, "malformed JSON"),
    ("[1, 2]", 1007, "JSON object with a string `type`"),
    ('{"type": 5}', 1007, "string `type`"),
    ('{"type": "shout"}', 1008, "unknown message type 'shout'"),
    ('{"type": "text", "text": "hi"}', 1008, "first message must be `start`"),
    (b"\x00\x01", 1008, "send `start` before audio"),
    ('{"type": "start", "protocol": 2}', 1008, "invalid `start`"),
    ('{"type": "start", "character_id": "nobody"}', 1008, "character not found"),
    ('{"type": "start", "n": NaN}', 1007, "NaN"),
]


@pytest.mark.parametrize("message, code, reason", GARBAGE)
async def test_garbage_before_start_closes_with_a_reason(companion_client, llm_server,
                                                         message: Any, code: int,
                                                         reason: str) -> None:
    client, ws = await session(companion_client, llm_server)
    await ws.conn.send(message)
    got_code, got_reason = await ws.closed()
    assert got_code == code and reason in got_reason, (got_code, got_reason)
    assert (await client.get("/health")).status == 200


async def test_garbage_mid_session_loses_nothing(companion_client, llm_server) -> None:
    llm_server.push(Script(tokens=tokens("Stored.")))
    client, ws = await session(companion_client, llm_server,
                               config={"server": {"websocket": {"max_frame_bytes": 8192}}})
    ready = await ws.start()
    await ws.send("text", text="")  # well-formed but invalid: an error, the session goes on
    error = await ws.until("error")
    assert error.data["type"] == "bad_request" and "text" in error.data["error"]
    await ws.send("config", voice="../../etc/passwd")
    assert (await ws.until("error")).data["type"] == "bad_request"
    await ws.send("text", text="Keep this.")
    await ws.until("done")
    await ws.conn.send(b"\x00" * 3)
    assert await ws.closed() == (1007, "an audio frame of 3 bytes: PCM16 frames hold whole "
                                       "2-byte samples")
    for payload, code in ((b"\x00" * 10_000, 1009), ("x" * 9000, 1009),
                          (json.dumps({"type": "ping", "id": "x" * 30_000}), 1009)):
        ws = await open_ws(client)
        await ws.start(conversation_id=ready["conversation_id"])
        await ws.conn.send(payload)
        got, _ = await ws.closed()
        assert got == code
    messages = await stored(client, ready["conversation_id"])
    assert [(m["content"], m["status"]) for m in messages[-2:]] == [
        ("Keep this.", "complete"), ("Stored.", "complete")]
    assert (await client.get("/health")).status == 200


async def test_idle_sessions_and_slow_starts_are_closed(companion_client, llm_server) -> None:
    client, ws = await session(companion_client, llm_server, config={"server": {"websocket": {
        "idle_timeout_s": 0.5, "auth_timeout_s": 0.5}}})
    assert await ws.closed() == (4008, "no `start` message for 0.5 s")
    ws = await open_ws(client)
    await ws.start()
    assert await ws.closed() == (4008, "no message for 0.5 s")


async def test_a_session_over_its_byte_cap_is_closed(companion_client, llm_server) -> None:
    _client, ws = await session(companion_client, llm_server, config={"server": {"websocket": {
        "max_session_bytes": 1024 * 1024}}})
    await ws.start()
    silence = bytes(32_000)
    for _ in range(40):
        try:
            await ws.conn.send(silence)
        except Exception:
            break
    code, reason = await ws.closed()
    assert code == 1009 and "over 1048576 bytes" in reason


async def test_server_shutdown_closes_sessions_with_1001(companion_client, llm_server) -> None:
    client, ws = await session(companion_client, llm_server)
    await ws.start()
    await client.close()
    code, reason = await ws.closed()
    assert code == 1001 and "shutting down" in reason


# --- the protocol document ------------------------------------------------------------------


def test_docs_carry_the_protocol_schema() -> None:
    text = (REPO / "docs" / "ws.md").read_text()
    block = re.search(r"<!-- schema -->\n```json\n(.*?)\n```", text, re.DOTALL)
    assert block, "docs/ws.md has no schema block"
    assert json.loads(block.group(1)) == json_schema(), (
        "docs/ws.md is stale: python -m companion_engine.talk.protocol prints the schema")


async def test_openapi_describes_the_websocket(companion_client, llm_server) -> None:
    client = await companion_client(profile=talking(llm_server))
    spec = await (await client.get("/openapi.json")).json()
    op = spec["paths"]["/api/ws"]["get"]
    assert "101" in op["responses"]
    # 401 is documented where a key is asked for: this server has none (loopback)
    assert "401" not in op["responses"] and "security" not in spec
    assert {p["name"] for p in op["parameters"]} >= {"Upgrade", "Sec-WebSocket-Protocol"}
    assert "multipart/form-data" in spec["paths"]["/api/transcribe"]["post"]["requestBody"][
        "content"]
    await asyncio.sleep(0)
