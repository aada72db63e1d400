"""Voice activity: speech probabilities per frame turned into utterance start and end.

A ``VADBackend`` only scores frames. ``VADStream`` does the rest for one audio
stream: it cuts whatever arrives (any chunk size) into the backend's frames,
scores them on a worker thread, never on the event loop, and feeds the scores to
a ``Segmenter``, whose rules are those of Silero's own iterator plus a minimum
speech length:

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
import threading
from concurrent.futures import ThreadPoolExecutor
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


_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The threads frames are scored on (shared by every session; the loop never scores)."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vad")
        return _EXECUTOR


class VADStream:
    """One audio stream (a WebSocket session's microphone) through one VAD backend.

    ``await feed(pcm)`` takes 16-bit mono PCM at the backend's rate in any chunk size
    and returns the events the new audio completed.
    """

    def __init__(self, backend: VADBackend, options: VADOptions) -> None:
        self.backend = backend
        self.options = options
        self.frame_bytes = backend.frame_samples * 2
        self.state: Any = backend.new_state()
        self.segmenter = Segmenter(options, backend.frame_samples, backend.sample_rate)
        self._pending = bytearray()
        #: Samples fed so far (scored or waiting for a whole frame).
        self.samples = 0
        #: The last frame's speech probability.
        self.probability = 0.0

    @property
    def position_ms(self) -> int:
        return self.samples * 1000 // self.backend.sample_rate

    async def feed(self, pcm: bytes) -> list[VADEvent]:
        frames = self._take(pcm)
        if not frames:
            return []
        loop = asyncio.get_running_loop()
        probs = await loop.run_in_executor(executor(), self._score, frames)
        return self._segment(probs)

    def feed_sync(self, pcm: bytes) -> list[VADEvent]:
        """``feed`` on the calling thread (for offline use and tests)."""
        frames = self._take(pcm)
        return self._segment(self._score(frames)) if frames else []

    def finish(self) -> list[VADEvent]:
        return self.segmenter.finish()

    def _take(self, pcm: bytes) -> bytes:
        self.samples += len(pcm) // 2
        self._pending += pcm
        n = len(self._pending) // self.frame_bytes * self.frame_bytes
        if not n:
            return b""
        frames = bytes(self._pending[:n])
        del self._pending[:n]
        return frames

    def _score(self, frames: bytes) -> list[float]:
        fb, score, state = self.frame_bytes, self.backend.speech_probability, self.state
        return [float(score(frames[i:i + fb], state)) for i in range(0, len(frames), fb)]

    def _segment(self, probs: list[float]) -> list[VADEvent]:
        events: list[VADEvent] = []
        for p in probs:
            events += self.segmenter.push(p)
        if probs:
            self.probability = probs[-1]
        return events
