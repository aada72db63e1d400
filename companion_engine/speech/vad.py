"""Voice activity: speech probabilities per frame turned into utterance start and end.

A ``VADBackend`` only scores frames. ``VADStream`` does the rest for one audio
stream: it cuts whatever arrives (any chunk size) into the backend's frames,
scores them on a worker thread (``Scorers``, a block of frames per trip), never on
the event loop, and feeds the scores to a ``Segmenter``, whose rules are those of
Silero's own iterator plus a minimum speech length:

- a frame at or above ``threshold`` while silent is an *onset* (``onset`` event);
- the onset becomes speech (``speech_start``, dated at the onset) once
  ``min_speech_ms`` of frames reached the threshold; a gap of
  ``min(min_silence_ms, 200 ms)`` before that makes it a *false start*
  (``false_start``): a cough or a click starts no utterance and interrupts nothing;
- speech ends (``speech_end``, dated where the silence began) after
  ``min_silence_ms`` of frames below ``threshold - 0.15``; a frame at or above the
  threshold in between resets that count; an utterance reaching ``max_speech_s``
  ends there (``forced``).

Everything is counted in samples, so events depend only on the audio, never on
how it was chunked or how fast it arrived (a property the tests check).
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from companion_engine.stages import VADBackend, VADOptions

VADEventKind = Literal["onset", "false_start", "speech_start", "speech_end"]

#: The longest gap an onset may have and still become speech (or ``min_silence_ms``).
FALSE_START_GAP_MS = 200
#: How far below ``threshold`` a frame must fall to count as silence during speech.
NEG_THRESHOLD_OFFSET = 0.15


@dataclass(frozen=True, slots=True)
class VADEvent:
    """Something the detector decided, dated in ms of the stream's audio."""

    kind: VADEventKind
    #: ``onset``/``speech_start``: where the speech began; ``false_start``: where the onset
    #: was; ``speech_end``: where the silence began (or the cut, if ``forced``).
    at_ms: int
    #: ``speech_end`` only: where its speech began.
    start_ms: int | None = None
    #: ``speech_end`` only: cut at ``max_speech_s``, not ended by silence.
    forced: bool = False


class Segmenter:
    """Frame probabilities in, ``VADEvent`` out (pure logic, no audio, no I/O)."""

    SILENT, ONSET, SPEECH = "silent", "onset", "speech"

    def __init__(self, options: VADOptions, frame_samples: int, sample_rate: int) -> None:
        self.frame_samples = frame_samples
        self.sample_rate = sample_rate
        frame_ms = frame_samples * 1000 / sample_rate
        self.threshold = options.threshold
        self.neg_threshold = max(options.threshold - NEG_THRESHOLD_OFFSET, 0.01)
        self.min_speech = max(1, math.ceil(options.min_speech_ms / frame_ms))
        self.min_silence = max(1, math.ceil(options.min_silence_ms / frame_ms))
        self.false_start_gap = max(1, math.ceil(
            min(options.min_silence_ms, FALSE_START_GAP_MS) / frame_ms))
        self.max_speech = max(1, math.ceil(options.max_speech_s * 1000 / frame_ms))
        self.state = self.SILENT
        #: Frames scored so far.
        self.frames = 0
        self._start = 0
        self._voiced = 0
        self._gap = 0
        self._silence_start: int | None = None

    def ms(self, frame: int) -> int:
        return frame * self.frame_samples * 1000 // self.sample_rate

    @property
    def silence_started(self) -> bool:
        """In speech, frames below the silence threshold are being counted."""
        return self._silence_start is not None

    @property
    def start_ms(self) -> int | None:
        """Where the current onset or speech began (None while silent)."""
        return None if self.state == self.SILENT else self.ms(self._start)

    def push(self, p: float) -> list[VADEvent]:
        n = self.frames
        self.frames += 1
        events: list[VADEvent] = []
        if self.state == self.SILENT:
            if p >= self.threshold:
                self.state, self._start, self._voiced, self._gap = self.ONSET, n, 1, 0
                events.append(VADEvent("onset", self.ms(n)))
                self._confirm(events)
            return events
        if self.state == self.ONSET:
            if p >= self.threshold:
                self._voiced += 1
                self._gap = 0
                self._confirm(events)
            else:
                self._gap += 1
                if self._gap >= self.false_start_gap:
                    self.state = self.SILENT
                    events.append(VADEvent("false_start", self.ms(self._start)))
            return events
        # SPEECH
        if p >= self.threshold:
            self._silence_start = None
        elif p < self.neg_threshold and self._silence_start is None:
            self._silence_start = n
        if self._silence_start is not None and self.frames - self._silence_start >= \
                self.min_silence:
            events.append(VADEvent("speech_end", self.ms(self._silence_start),
                                   self.ms(self._start)))
            self.state = self.SILENT
        elif self.frames - self._start >= self.max_speech:
            events.append(VADEvent("speech_end", self.ms(self.frames), self.ms(self._start),
                                   forced=True))
            self.state = self.SILENT
        return events

    def _confirm(self, events: list[VADEvent]) -> None:
        if self._voiced >= self.min_speech:
            self.state = self.SPEECH
            self._silence_start = None
            events.append(VADEvent("speech_start", self.ms(self._start)))

    def finish(self) -> list[VADEvent]:
        """The stream ended: close an utterance still open."""
        if self.state == self.SPEECH:
            end = self._silence_start if self._silence_start is not None else self.frames
            self.state = self.SILENT
            return [VADEvent("speech_end", self.ms(end), self.ms(self._start))]
        self.state = self.SILENT
        return []


class Scorers:
    """The threads frames are scored on, shared by every session: the event loop never
    scores. Leaner than an executor for a hop made 8-16 times a second per session: one
    C-level queue, no ``concurrent.futures`` machinery, the result posted straight back."""

    THREADS = 2

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"vad-{i}", daemon=True)
                         for i in range(self.THREADS)]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[[], list[float]]) -> asyncio.Future[list[float]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[float]] = loop.create_future()
        self._jobs.put((loop, future, fn))
        return future

    def _work(self) -> None:
        while True:
            loop, future, fn = self._jobs.get()
            try:
                result = fn()
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


_SCORERS: Scorers | None = None
_SCORERS_LOCK = threading.Lock()


def scorers() -> Scorers:
    global _SCORERS
    with _SCORERS_LOCK:
        if _SCORERS is None:
            _SCORERS = Scorers()
        return _SCORERS


class VADStream:
    """One audio stream (a WebSocket session's microphone) through one VAD backend.

    ``await feed(pcm)`` takes 16-bit mono PCM at the backend's rate in any chunk size
    and returns the events the new audio completed.

    Whole frames wait in one buffer and go to a scoring thread as a block: each trip
    (a thread wake-up, a model run, the result posted back to the loop) costs more than
    a frame's own scoring, so fewer, larger blocks are cheaper. How many frames make a
    block depends on what a late decision would cost:

    - ``batch_frames`` (2, 64 ms of Silero audio) while the stream is ``urgent`` (the
      session is playing a reply: an onset must hold its audio at once, barge-in) and
      while a decision is near: an onset is being confirmed (``speech_start`` or
      ``false_start``), or the speech has fallen silent (``speech_end`` may come);
    - ``relaxed_batch_frames`` (4, 128 ms) otherwise: listening to silence with nothing
      to interrupt (only an onset can come, and nothing waits for it) or to speech that
      goes on.

    Events are the same whatever the blocks (the scores and the segmenter see every frame
    in order; a test checks it): only when they are delivered moves, by at most the
    frames of one block.
    """

    #: Frames per trip while a decision is near or the stream is ``urgent``: 2 halves the
    #: trips for at most one frame (32 ms) more before an onset is seen.
    batch_frames = 2
    #: Frames per trip otherwise.
    relaxed_batch_frames = 4

    def __init__(self, backend: VADBackend, options: VADOptions) -> None:
        self.backend = backend
        self.options = options
        self.frame_bytes = backend.frame_samples * 2
        self.state: Any = backend.new_state()
        self.segmenter = Segmenter(options, backend.frame_samples, backend.sample_rate)
        self._pending = bytearray()
        self._urgent_bytes = self.frame_bytes * self.batch_frames
        self._relaxed_bytes = self.frame_bytes * max(self.batch_frames,
                                                     self.relaxed_batch_frames)
        # Relaxed blocks in speech only when the shortest ending (silence start to
        # ``speech_end``) outlasts a relaxed block.
        self._relax_in_speech = self.segmenter.min_silence > self.relaxed_batch_frames
        #: The session is playing a reply: score as soon as a small block is there.
        self.urgent = False
        #: Samples fed so far (scored or waiting for a whole frame).
        self.samples = 0
        #: The last frame's speech probability.
        self.probability = 0.0

    @property
    def position_ms(self) -> int:
        return self.samples * 1000 // self.backend.sample_rate

    @property
    def block_bytes(self) -> int:
        """How much audio makes a block to score now (see the class docstring)."""
        if self.urgent:
            return self._urgent_bytes
        seg = self.segmenter
        state = seg.state
        if state == Segmenter.SILENT or (state == Segmenter.SPEECH and self._relax_in_speech
                                         and not seg.silence_started):
            return self._relaxed_bytes
        return self._urgent_bytes

    async def feed(self, pcm: bytes) -> list[VADEvent]:
        frames = self._take(pcm)
        if not frames:
            return []
        probs = await scorers().run(lambda: self._score(frames))
        return self._segment(probs)

    def feed_sync(self, pcm: bytes) -> list[VADEvent]:
        """``feed`` on the calling thread (for offline use and tests)."""
        frames = self._take(pcm)
        return self._segment(self._score(frames)) if frames else []

    def finish(self) -> list[VADEvent]:
        """The stream ended: score the whole frames still waiting (here, on the caller's
        thread) and close an utterance still open."""
        n = len(self._pending) // self.frame_bytes * self.frame_bytes
        frames, self._pending = bytes(self._pending[:n]), self._pending[n:]
        events = self._segment(self._score(frames)) if frames else []
        return events + self.segmenter.finish()

    def _take(self, pcm: bytes) -> bytes:
        self.samples += len(pcm) >> 1
        pending = self._pending
        pending += pcm
        if len(pending) < self.block_bytes:
            return b""
        n = len(pending) // self.frame_bytes * self.frame_bytes
        frames = bytes(pending[:n])
        del pending[:n]
        return frames

    def _score(self, frames: bytes) -> list[float]:
        return self.backend.speech_probabilities(frames, self.state)

    def _segment(self, probs: list[float]) -> list[VADEvent]:
        events: list[VADEvent] = []
        for p in probs:
            events += self.segmenter.push(p)
        if probs:
            self.probability = probs[-1]
        return events
