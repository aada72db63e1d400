"""SpeechSession: ordered audio events, bounded concurrency, failures isolated, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from companion_engine.builtin.tts import EspeakTTS
from companion_engine.speech.session import SpeechSession
from companion_engine.stages import Audio, Sanitizer
from companion_engine.turn import Turn
from tests.speech_helpers import Recorder, decoded_duration_ms, make_pipeline, make_turn

SENTENCES = [
    "Hello there, traveller.",
    "The forest is quiet tonight, and the stars are out.",
    "Shall we walk a little further?",
    "I know a place by the river where the water sings.",
]


async def test_audio_events_arrive_in_sentence_order_with_real_audio() -> None:
    pipeline = make_pipeline({"cleaners": [], "concurrency": 3})
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    for i, s in enumerate(SENTENCES):
        assert session.add(s) == i
    await session.finish()
    assert rec.names() == ["audio_ready"] * len(SENTENCES)
    assert rec.indexes() == list(range(len(SENTENCES)))
    for (_, event), sentence in zip(rec.events, SENTENCES, strict=True):
        assert event["sentence"] == sentence
        assert event["format"] == "wav"
        assert event["sample_rate"] == 22050
        assert decoded_duration_ms(event) == event["duration_ms"] > 300
        assert {v["viseme"] for v in event["visemes"]} - {"sil"}
    assert session.first_audio_at is not None
    # Longer sentences give longer audio: the text really was spoken.
    durations = [e["duration_ms"] for _, e in rec.events]
    assert durations[1] > durations[0]


async def test_silent_sentences_are_skipped_without_breaking_order() -> None:
    pipeline = make_pipeline({"cleaners": ["emoji"]})
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    session.add("First one.")
    session.add("😊 🎉")
    session.add("!!! ...")
    session.add("Last one.")
    await session.finish()
    assert rec.indexes() == [0, 3]
    assert [e["sentence"] for _, e in rec.events] == ["First one.", "Last one."]


async def test_finish_without_sentences_and_aclose_are_idempotent() -> None:
    pipeline = make_pipeline({"cleaners": []})
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    await session.finish()
    await session.aclose()
    await session.aclose()
    assert rec.events == []


async def test_aclose_cancels_pending_synthesis() -> None:
    pipeline = make_pipeline({"cleaners": [], "concurrency": 1})
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    long = "This is a long sentence that takes espeak a little while to speak. " * 20
    for _ in range(20):
        session.add(long)
    await asyncio.sleep(0)
    await session.aclose()
    assert len(rec.events) < 20
    assert all(i.task is None or i.task.done() for i in session.items)
    # Nothing is emitted after the close.
    before = len(rec.events)
    await asyncio.sleep(0.05)
    assert len(rec.events) == before


async def test_none_backend_speaks_nothing() -> None:
    pipeline = make_pipeline({"tts": "none"})
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    session.add("Hello there.")
    await session.finish()
    assert rec.events == []


class ExplodingCleaner(Sanitizer):
    """A plugin cleaner that breaks on its third sentence."""

    name = "exploding"

    async def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        n = 0
        async for sentence in chunks:
            n += 1
            if n == 3:
                raise ValueError("cleaner bug")
            yield sentence


async def test_a_failing_cleaner_gives_audio_errors_from_that_sentence_on() -> None:
    pipeline = make_pipeline({"cleaners": []})
    pipeline.cleaners = [ExplodingCleaner()]
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    session.add("One sentence.")
    session.add("Two sentences.")
    session.add("Three sentences.")
    await asyncio.sleep(0.05)
    session.add("Four sentences.")
    await session.finish()
    assert rec.names() == ["audio_ready", "audio_ready", "audio_error", "audio_error"]
    assert rec.indexes() == [0, 1, 2, 3]
    assert "cleaner bug" in rec.events[2][1]["error"]


async def test_emit_failing_ends_finish_and_cancels_the_rest() -> None:
    pipeline = make_pipeline({"cleaners": [], "concurrency": 1})

    async def gone(name: str, data: dict[str, object]) -> None:
        raise ConnectionResetError("client went away")

    session = SpeechSession(pipeline, make_turn(pipeline), gone)
    for i in range(5):
        session.add(f"Sentence number {i}.")
    with pytest.raises(ConnectionResetError):
        await session.finish()
    assert all(i.task is None or i.task.done() for i in session.items)


class SkipParenthesesFilter(Sanitizer):
    """A third-party cleaner that yields nothing for some sentences (breaks 1:1)."""

    name = "skip_asides"

    async def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        async for sentence in chunks:
            if not sentence.startswith("("):
                yield sentence


class ClauseSplitter(Sanitizer):
    """A third-party cleaner that yields several pieces for one sentence."""

    name = "clauses"

    async def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        async for sentence in chunks:
            for piece in sentence.split(";"):
                yield piece.strip()


async def test_cleaners_that_skip_or_split_keep_audio_on_its_sentence() -> None:
    """Speech text is matched to its sentence by when the chain asks for the next one."""
    pipeline = make_pipeline({"cleaners": [], "concurrency": 2})
    pipeline.cleaners = [SkipParenthesesFilter(), ClauseSplitter()]
    rec = Recorder()
    session = SpeechSession(pipeline, make_turn(pipeline), rec)
    session.add("First we walk; then we rest.")
    session.add("(She smiles quietly.)")
    session.add("The river is near.")
    await asyncio.sleep(0.01)
    session.add("(An aside at the end.)")
    await session.finish()
    assert rec.indexes() == [0, 2]
    assert [e["sentence"] for _, e in rec.events] == ["First we walk then we rest.",
                                                       "The river is near."]
    assert [e["display"] for _, e in rec.events] == ["First we walk; then we rest.",
                                                      "The river is near."]


class TwoPartEspeak(EspeakTTS):
    """A third-party streaming backend: the sentence's first half, then (once ``more`` is
    set) its second half, the last part marked ``final``."""

    name = "two_part"

    def __init__(self, marks: bool) -> None:
        super().__init__()
        #: Set when the session asks for the second part (it has handled the first).
        self.asked = asyncio.Event()
        self.more = asyncio.Event()
        self.marks = marks

    async def stream(self, text: str, turn: Turn) -> AsyncIterator[Audio]:
        head, _, tail = text.partition(",")
        yield await self.synthesize(head, turn)
        self.asked.set()
        await self.more.wait()
        last = await self.synthesize(tail or head, turn)
        last.final = True
        yield last


class MarkingEspeak(TwoPartEspeak):
    marks_final = True


@pytest.mark.parametrize("marks", [True, False])
async def test_a_backend_that_marks_its_last_part_gets_each_part_sent_at_once(
        marks: bool) -> None:
    """With ``marks_final`` a part goes out as it arrives; without it the session holds it
    until the next one says whether it was the last."""
    pipeline = make_pipeline({"cleaners": []})
    tts = MarkingEspeak(marks) if marks else TwoPartEspeak(marks)
    pipeline.tts = tts
    rec = Recorder()
    turn = make_turn(pipeline)
    turn.chunked_audio = True
    session = SpeechSession(pipeline, turn, rec)
    session.add("The first half of it, and then the second half.")
    await asyncio.wait_for(tts.asked.wait(), 30)
    for _ in range(5):  # the sender's turn to emit what it was handed
        await asyncio.sleep(0)
    sent_early = [(n, e["part"], e["final"]) for n, e in rec.events]
    tts.more.set()
    await session.finish()
    assert sent_early == ([("audio_chunk", 0, False)] if marks else [])
    assert [(n, e["part"], e["final"]) for n, e in rec.events] == [
        ("audio_chunk", 0, False), ("audio_chunk", 1, True)]
    await tts.aclose()
