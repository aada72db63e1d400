"""Voice activity detection on real speech (espeak-ng, silence, noise) and its segmenting rules."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.config import Profile
from companion_engine.pipeline import Pipeline, build_pipeline
from companion_engine.speech import silero
from companion_engine.speech.vad import Segmenter, VADEvent, VADStream
from companion_engine.stages import VADBackend, VADOptions
from tests.speech_helpers import plugin_host
from tests.talk_helpers import Recording, frames

pytest.importorskip("onnxruntime", reason="Silero VAD needs onnxruntime (the talk extra)")


def vad_pipeline(spec: Any) -> Pipeline:
    profile = Profile.model_validate({"prompt": [], "output": [], "speech": {"vad": spec}})
    return build_pipeline(profile, plugin_host())


@pytest.fixture(scope="module")
def conversation() -> Recording:
    """Three utterances: between them silence, and a stretch of fan noise."""
    return (Recording().silence(500).say("Hello there, how are you today?").silence(900)
            .say("I would like a cup of tea, please.").noise(800, 0.01)
            .say("Thank you very much.").silence(1000))


async def detect(pipeline: Pipeline, pcm: bytes, ms: int = 20) -> list[VADEvent]:
    await pipeline.vad.setup(None)  # type: ignore[arg-type]
    stream = pipeline.vad.stream()
    events: list[VADEvent] = []
    for frame in frames(pcm, ms):
        events += await stream.feed(frame)
    return events + stream.finish()


def utterances(events: list[VADEvent]) -> list[tuple[int, int]]:
    starts = [e.at_ms for e in events if e.kind == "speech_start"]
    ends = [e for e in events if e.kind == "speech_end"]
    assert [e.start_ms for e in ends] == starts, "each end belongs to the start before it"
    return [(e.start_ms or 0, e.at_ms) for e in ends]


def assert_close(found: list[tuple[int, int]], expected: list[tuple[int, int]], *,
                 start_ms: int, end_ms: int) -> None:
    assert len(found) == len(expected), (found, expected)
    for (a, b), (x, y) in zip(found, expected, strict=True):
        assert abs(a - x) <= start_ms, f"speech started at {x} ms, detected at {a} ms"
        assert abs(b - y) <= end_ms, f"speech ended at {y} ms, detected at {b} ms"


@pytest.mark.parametrize("noise", [0.0, 0.005, 0.01])
async def test_silero_finds_each_utterance_at_the_generated_times(
        conversation: Recording, noise: float) -> None:
    try:
        silero.model_path()
    except silero.SileroUnavailable as exc:
        pytest.skip(str(exc))
    pipeline = vad_pipeline({"silero": {"fallback": False}})
    events = await detect(pipeline, conversation.pcm(conversation.with_noise(noise)))
    assert_close(utterances(events), conversation.segments, start_ms=100, end_ms=200)
    assert "false_start" not in [e.kind for e in events]


@pytest.mark.parametrize("noise", [0.003, 0.008])
async def test_webrtcvad_finds_each_utterance(noise: float) -> None:
    rec = (Recording(seed=2).silence(500).say("Hello there, how are you today?").silence(900)
           .say("I would like a cup of tea, please.").silence(900).say("Thank you.")
           .silence(1000))
    pipeline = vad_pipeline({"webrtcvad": {"aggressiveness": 3}})
    events = await detect(pipeline, rec.pcm(rec.with_noise(noise)), ms=30)
    assert_close(utterances(events), rec.segments, start_ms=150, end_ms=250)


async def test_a_short_sound_is_a_false_start_not_speech() -> None:
    rec = Recording().silence(400).say("Hello there", max_ms=120).silence(800)
    pipeline = vad_pipeline({"silero": {"min_speech_ms": 250}})
    events = await detect(pipeline, rec.pcm())
    kinds = [e.kind for e in events]
    assert "speech_start" not in kinds and "speech_end" not in kinds
    assert kinds == ["onset", "false_start"]
    # The same clip counts as speech once the minimum is below its length.
    pipeline = vad_pipeline({"silero": {"min_speech_ms": 60}})
    assert "speech_start" in [e.kind for e in await detect(pipeline, rec.pcm())]


async def test_a_long_utterance_is_cut_at_max_speech_s() -> None:
    rec = Recording().silence(300)
    for _ in range(3):
        rec.say("I would like a cup of tea, please, and a biscuit.").silence(100)
    rec.silence(800)
    pipeline = vad_pipeline({"silero": {"max_speech_s": 2}})
    events = await detect(pipeline, rec.pcm())
    ends = [e for e in events if e.kind == "speech_end"]
    assert ends[0].forced and ends[0].at_ms - (ends[0].start_ms or 0) <= 2050
    assert len(ends) >= 2


def test_silero_state_is_per_stream() -> None:
    """Two streams through one shared model do not share its recurrent state."""
    try:
        model = silero.load()
    except silero.SileroUnavailable as exc:
        pytest.skip(str(exc))
    fb = silero.FRAME_SAMPLES * 2
    speech = Recording().say("Hello there, how are you today?").pcm()[:fb * 30]
    other = Recording(seed=5).noise(1000, 0.05).pcm()[:fb * 30]
    alone = silero.SileroState()
    expected = [model.probability(speech[i:i + fb], alone) for i in range(0, len(speech), fb)]
    a, b = silero.SileroState(), silero.SileroState()
    mixed = []
    for i in range(0, len(speech), fb):
        model.probability(other[i:i + fb], b)
        mixed.append(model.probability(speech[i:i + fb], a))
    assert np.allclose(expected, mixed, atol=1e-5)
    assert max(expected) > 0.5


class Threaded(VADBackend):
    """Loudness as probability; records which thread scored."""

    name = "t_threaded"
    frame_samples = 160
    threads: set[str] = set()

    def speech_probability(self, frame: bytes, state: Any) -> float:
        Threaded.threads.add(threading.current_thread().name)
        samples = np.frombuffer(frame, "<i2")
        return 1.0 if np.abs(samples).max(initial=0) > 1000 else 0.0


async def test_frames_are_scored_on_a_worker_thread_not_the_loop() -> None:
    Threaded.threads.clear()
    stream = VADStream(Threaded(), VADOptions())
    await stream.feed(bytes(3200))
    assert Threaded.threads and threading.main_thread().name not in Threaded.threads
    assert all(name.startswith("vad") for name in Threaded.threads)


def _loud(ms: int) -> bytes:
    return (np.full(16 * ms, 5000, "<i2")).tobytes()


@settings(max_examples=60)
@given(pattern=st.lists(st.tuples(st.booleans(), st.integers(1, 900)), min_size=1, max_size=12),
       cuts=st.lists(st.integers(1, 4000), min_size=1, max_size=40))
def test_events_do_not_depend_on_how_the_audio_was_chunked(
        pattern: list[tuple[bool, int]], cuts: list[int]) -> None:
    pcm = b"".join(_loud(ms) if loud else bytes(32 * ms) for loud, ms in pattern)
    whole = VADStream(Threaded(), VADOptions())
    expected = whole.feed_sync(pcm) + whole.finish()
    chunked = VADStream(Threaded(), VADOptions())
    events: list[VADEvent] = []
    pos, i = 0, 0
    while pos < len(pcm):
        step = cuts[i % len(cuts)] * 2
        events += chunked.feed_sync(pcm[pos:pos + step])
        pos += step
        i += 1
    assert events + chunked.finish() == expected


@settings(max_examples=150)
@given(probs=st.lists(st.floats(0, 1), max_size=400),
       min_speech=st.integers(0, 600), min_silence=st.integers(30, 900))
def test_segmenter_events_are_well_formed(probs: list[float], min_speech: int,
                                          min_silence: int) -> None:
    options = VADOptions(min_speech_ms=min_speech, min_silence_ms=min_silence)
    seg = Segmenter(options, 512, 16000)
    events = [e for p in probs for e in seg.push(p)] + seg.finish()
    state = "silent"
    last_at = -1
    for e in events:
        assert e.at_ms >= 0
        if e.kind == "onset":
            assert state == "silent" and e.at_ms > last_at
            state, onset = "onset", e.at_ms
        elif e.kind == "false_start":
            assert state == "onset" and e.at_ms == onset
            state = "silent"
        elif e.kind == "speech_start":
            assert state == "onset" and e.at_ms == onset
            state = "speech"
        else:
            assert state == "speech" and e.start_ms == onset and e.at_ms >= onset
            state = "silent"
        last_at = e.at_ms
    assert state != "speech", "finish() closes open speech"
    # Every utterance had at least min_speech_ms of frames at or over the threshold.
    need = max(1, -(-min_speech // 32))
    for e in events:
        if e.kind == "speech_end":
            voiced = sum(1 for i, p in enumerate(probs)
                         if p >= 0.5 and (e.start_ms or 0) <= i * 32 < e.at_ms)
            assert voiced >= need


def docs_example(marker: str) -> str:
    """The fenced Python block of docs/plugins.md that starts with ``marker``."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        if block.startswith(marker):
            return block
    raise AssertionError(f"no example starting with {marker!r} in docs/plugins.md")


async def test_hook_register_vad_backends(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The docs/plugins.md example, registered from a plugin file, cuts real speech."""
    from companion_engine.plugins import PluginHost
    from tests.plugin_helpers import write_plugin

    write_plugin(tmp_path, "loudness", docs_example("# plugins/loudness.py"))
    host = PluginHost.load(tmp_path, entry_points=False)
    assert host.stages["vad_backend"]["loudness"].plugin == "loudness"
    profile = Profile.model_validate({"speech": {"vad": {"loudness": {
        "level": 2000, "min_silence_ms": 400}}}})
    pipeline = build_pipeline(profile, host)
    rec = (Recording().silence(400).say("Hello there, how are you today?").silence(700)
           .say("Fine, thanks.").silence(600))
    # A peak detector misses the quiet start of a fricative ("F"): looser than Silero.
    assert_close(utterances(await detect(pipeline, rec.pcm())), rec.segments,
                 start_ms=150, end_ms=450)


# --- blocks: scoring several frames per trip decides exactly what frame-by-frame does ---------


def _silero_or_skip(*, sequence: bool = True) -> silero.SileroModel:
    try:
        return silero.load(sequence=sequence)
    except silero.SileroUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def noisy_talk(conversation: Recording) -> bytes:
    return conversation.pcm(conversation.with_noise(0.005))


def frame_by_frame(pcm: bytes, options: VADOptions) -> list[VADEvent]:
    """The reference: each whole 512-sample window scored alone by the stepwise model, in
    order, into a segmenter; a partial window at the end is not scored."""
    model = _silero_or_skip(sequence=False)
    state = silero.SileroState()
    seg = Segmenter(options, silero.FRAME_SAMPLES, silero.SAMPLE_RATE)
    fb = silero.FRAME_SAMPLES * 2
    events: list[VADEvent] = []
    for i in range(0, len(pcm) - fb + 1, fb):
        events += seg.push(model.probability(pcm[i:i + fb], state))
    return events + seg.finish()


def test_the_sequence_export_scores_exactly_as_the_stepwise_model(noisy_talk: bytes) -> None:
    """Blocks of any size through the sequence export: the same probabilities and the same
    recurrent state, bit for bit, as one frame at a time."""
    seq = _silero_or_skip()
    if not seq.sequence:
        pytest.skip(f"this silero-vad wheel has no {silero.SEQUENCE_FILE}")
    step = _silero_or_skip(sequence=False)
    fb = silero.FRAME_SAMPLES * 2
    pcm = noisy_talk[:fb * 120]
    one, expected = silero.SileroState(), []
    for i in range(0, len(pcm), fb):
        expected.append(step.probability(pcm[i:i + fb], one))
    blocks, got = silero.SileroState(), []
    pos = 0
    for n in [1, 2, 4, 3, 7, 1, 16] * 10:
        got += seq.probabilities(pcm[pos:pos + n * fb], blocks)
        pos += n * fb
        if pos >= len(pcm):
            break
    assert got == expected[:len(got)] and len(got) == len(expected)
    assert np.array_equal(blocks.state, one.state)
    assert np.array_equal(blocks.context, one.context)
    assert max(expected) > 0.9 and min(expected) < 0.1


@pytest.mark.parametrize("chunk_samples", [1, 333, 511, 512, 513, 1000, 4799])
async def test_blocks_of_any_chunking_decide_as_frame_by_frame(
        noisy_talk: bytes, chunk_samples: int) -> None:
    """Real speech with noise, sent in chunks of odd sizes (a window split across chunks, a
    partial window at the end): the stream's blocks on the scoring threads give the same
    events, at the same times, as scoring each window alone."""
    options = VADOptions(min_silence_ms=500, min_speech_ms=250)
    pcm = noisy_talk + bytes(2 * 300)  # ends with a partial window
    expected = frame_by_frame(pcm, options)
    pipeline = vad_pipeline({"silero": {"fallback": False}})
    await pipeline.vad.setup(None)  # type: ignore[arg-type]
    stream = pipeline.vad.stream(options)
    step = chunk_samples * 2
    events: list[VADEvent] = []
    for i, pos in enumerate(range(0, len(pcm), step)):
        stream.urgent = i % 7 == 3  # a reply starts and stops now and then
        events += await stream.feed(pcm[pos:pos + step])
    events += stream.finish()
    assert events == expected
    assert [e.kind for e in expected].count("speech_end") == 3
    assert stream.samples == len(pcm) // 2


def test_block_size_follows_what_a_late_decision_would_cost() -> None:
    stream = VADStream(Threaded(), VADOptions(min_speech_ms=60, min_silence_ms=200))
    small = stream.frame_bytes * VADStream.batch_frames
    large = stream.frame_bytes * VADStream.relaxed_batch_frames
    assert small < large
    assert stream.block_bytes == large  # silent, nothing to interrupt
    stream.urgent = True
    assert stream.block_bytes == small  # a reply plays: an onset must hold it at once
    stream.urgent = False
    loud, quiet = _loud(10), bytes(320)  # one 10 ms frame each
    assert stream.feed_sync(loud * 3) == []  # not a block yet: nothing scored
    assert [e.kind for e in stream.feed_sync(loud)] == ["onset"]
    assert stream.block_bytes == small  # an onset being confirmed (60 ms)
    assert [e.kind for e in stream.feed_sync(loud * 2)] == ["speech_start"]
    assert stream.block_bytes == large  # speech going on
    stream.feed_sync(quiet * 4)  # silence after speech: the end may come
    assert stream.segmenter.silence_started and stream.block_bytes == small
    # An ending shorter than a large block: small blocks all through the speech.
    short = VADStream(Threaded(), VADOptions(min_speech_ms=10, min_silence_ms=30))
    assert [e.kind for e in short.feed_sync(loud * 4)] == ["onset", "speech_start"]
    assert short.block_bytes == small


@settings(max_examples=60)
@given(pattern=st.lists(st.tuples(st.booleans(), st.integers(1, 900)), min_size=1, max_size=12),
       cuts=st.lists(st.tuples(st.integers(1, 4000), st.booleans()), min_size=1, max_size=40),
       min_silence=st.integers(30, 600))
def test_urgency_changes_when_events_come_not_which(
        pattern: list[tuple[bool, int]], cuts: list[tuple[int, bool]], min_silence: int) -> None:
    """Whatever the blocks (urgent or relaxed, any chunking), the events are those of frames
    scored one at a time."""
    options = VADOptions(min_silence_ms=min_silence)
    pcm = b"".join(_loud(ms) if loud else bytes(32 * ms) for loud, ms in pattern)
    backend = Threaded()
    seg = Segmenter(options, backend.frame_samples, backend.sample_rate)
    fb = backend.frame_samples * 2
    expected = [e for i in range(0, len(pcm) - fb + 1, fb)
                for e in seg.push(backend.speech_probability(pcm[i:i + fb], None))]
    expected += seg.finish()
    stream = VADStream(backend, options)
    events: list[VADEvent] = []
    pos, i = 0, 0
    while pos < len(pcm):
        size, urgent = cuts[i % len(cuts)]
        stream.urgent = urgent
        events += stream.feed_sync(pcm[pos:pos + size * 2])
        pos += size * 2
        i += 1
    assert events + stream.finish() == expected


def test_a_backend_scoring_one_frame_scores_blocks_frame_by_frame() -> None:
    """``VADBackend.speech_probabilities`` defaults to ``speech_probability`` per frame."""
    backend = Threaded()
    fb = backend.frame_samples * 2
    pcm = _loud(10) + bytes(fb) + _loud(10) + bytes(fb // 2)  # and half a frame, not scored
    assert backend.speech_probabilities(pcm, None) == [1.0, 0.0, 1.0]


class Loud512(VADBackend):
    """Loudness as probability, in Silero-sized frames (32 ms)."""

    name = "t_loud512"
    frame_samples = 512

    def speech_probability(self, frame: bytes, state: Any) -> float:
        return 1.0 if np.abs(np.frombuffer(frame, "<i2")).max(initial=0) > 1000 else 0.0


@pytest.mark.parametrize("lead_ms", range(0, 140, 12))
async def test_the_listener_keeps_the_pad_before_an_onset_in_a_pending_block(
        lead_ms: int) -> None:
    """While silent, up to a relaxed block of audio waits unscored: an onset found in it
    still gets its ``speech_pad_ms`` of audio before it."""
    from companion_engine.talk.listener import Listener

    options = VADOptions(min_speech_ms=60, speech_pad_ms=300)
    listener = Listener(Loud512(), options)
    pcm = bytes(32 * (2000 + lead_ms)) + _loud(600)
    onset = None
    for pos in range(0, len(pcm), 640):
        for event in await listener.feed(pcm[pos:pos + 640]):
            if event.kind == "onset":
                onset = event.at_ms
        if onset is not None:
            break
    assert onset is not None and abs(onset - (2000 + lead_ms)) <= 32
    audio = listener.audio(onset)
    assert len(audio) // 32 == listener.position_ms - (onset - 300)
