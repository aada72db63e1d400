"""Chat turns with speech on: real espeak-ng audio interleaved with the text, in order."""

from __future__ import annotations

import base64

import pytest

from companion_engine.testing import LLMTestServer, Script
from tests.chat_helpers import chat_events, llm_profile, names, streamed_text
from tests.conftest import MakeClient

#: Every test here runs through both LLM clients (native, LiteLLM).
pytestmark = pytest.mark.usefixtures("llm_path")


async def test_audio_ready_per_sentence_before_done(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    client = await make_client(profile={**llm_profile(llm_server), "speech": {
        "enabled": True, "tts": {"espeak": {"voice": "en-us"}}}})
    tokens = ["Hello", " there", ", traveler", ".", " It's", " a", " fine", " day", " for",
              " a", " walk", ".", " *smiles*", " Shall", " we", " go", "?"]
    llm_server.push(Script(tokens=tokens, delay_s=0.05))
    events = await chat_events(client, {"messages": [{"role": "user", "content": "hi"}]})

    assert names(events)[0] == "provider_connected" and names(events)[-1] == "done"
    audio = [d for n, d in events if n == "audio_ready"]
    sentences = [d["sentence"] for n, d in events if n == "content" and d.get("sentence_complete")]
    assert len(audio) >= 2
    assert [a["index"] for a in audio] == sorted(a["index"] for a in audio)
    # the first sentence is heard while the reply is still streaming
    assert "content" in names(events)[names(events).index("audio_ready"):]
    for a in audio:
        wav = base64.b64decode(a["audio"])
        assert wav[:4] == b"RIFF" and a["format"] == "wav" and a["duration_ms"] > 100
    assert "It's" in " ".join(sentences)  # not &#x27;
    assert streamed_text(events) == "".join(tokens)
    done = events[-1][1]
    t = done["timings"]
    assert t["ttfa_ms"] is not None and t["first_sentence_ms"] <= t["ttfa_ms"] <= t["total_ms"]


async def test_enable_tts_false_overrides_the_profile(
    make_client: MakeClient, llm_server: LLMTestServer,
) -> None:
    client = await make_client(profile={**llm_profile(llm_server), "speech": {
        "enabled": True, "tts": "espeak"}})
    llm_server.push(Script(tokens=["One sentence.", " Two sentences."]))
    events = await chat_events(client, {"message": "hi", "enable_tts": False})
    assert "audio_ready" not in names(events)
    assert events[-1][1]["timings"]["ttfa_ms"] is None
