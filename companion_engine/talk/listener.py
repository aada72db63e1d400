"""One session's microphone: voice activity over the incoming audio, and the utterance.

The listener keeps only the audio it may still need: while silent, the last
``speech_pad_ms`` before the audio the detector has not scored yet (an onset may
be in it: the start of the next utterance, before the detector was sure); from
an onset on, everything since the onset minus the pad. ``audio()``
cuts an utterance out of it, padded on both sides, for the transcriber. Times
are ms of audio since the session's first frame, as in the ``vad`` events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from companion_engine.speech.vad import Segmenter, VADEvent, VADStream

if TYPE_CHECKING:
    from companion_engine.stages import VADBackend, VADOptions

#: Extra audio kept while silent, beyond the pad and the audio not scored yet.
SLACK_MS = 100


class Listener:
    """VAD over one PCM16 16 kHz stream, holding the audio of the current utterance."""

    def __init__(self, vad: VADBackend, options: VADOptions, *, offset_ms: int = 0) -> None:
        self.vad = vad
        self.options = options
        self.stream: VADStream = vad.stream(options)
        self.rate = vad.sample_rate
        #: Where this listener's audio starts on the session's timeline (a new listener
        #: after a reload or a ``config`` continues the same clock).
        self.offset_ms = offset_ms
        self._audio = bytearray()
        #: Sample index (on this listener's own clock) of ``_audio[0]``.
        self._first = 0

    @property
    def position_ms(self) -> int:
        return self.offset_ms + self.stream.position_ms

    @property
    def in_speech(self) -> bool:
        """An onset or speech is open (the user may be talking)."""
        return self.stream.segmenter.state != Segmenter.SILENT

    @property
    def speech_start_ms(self) -> int | None:
        start = self.stream.segmenter.start_ms
        return None if start is None else self.offset_ms + start

    async def feed(self, pcm: bytes) -> list[VADEvent]:
        """Add audio; the events it completed, dated on the session's timeline."""
        self._trim()
        self._audio += pcm
        events = await self.stream.feed(pcm)
        if not self.offset_ms:
            return events
        return [VADEvent(e.kind, e.at_ms + self.offset_ms,
                         None if e.start_ms is None else e.start_ms + self.offset_ms, e.forced)
                for e in events]

    def audio(self, start_ms: int, end_ms: int | None = None) -> bytes:
        """PCM of ``[start - pad, end + pad]`` (to now when ``end`` is None), as far as kept."""
        pad = self.options.speech_pad_ms
        first = self._sample(start_ms - pad) - self._first
        last = len(self._audio) // 2 if end_ms is None else \
            self._sample(end_ms + pad) - self._first
        first, last = max(0, first), min(len(self._audio) // 2, last)
        return bytes(self._audio[first * 2:last * 2]) if last > first else b""

    def _sample(self, ms: int) -> int:
        return (ms - self.offset_ms) * self.rate // 1000

    def _trim(self) -> None:
        start = self.speech_start_ms
        if start is None:  # silent: an onset can only be in what was not scored yet
            seg = self.stream.segmenter
            start = self.offset_ms + seg.ms(seg.frames) - SLACK_MS
        keep_ms = start - self.options.speech_pad_ms
        drop = self._sample(keep_ms) - self._first
        if drop > 0:
            drop = min(drop, len(self._audio) // 2)
            del self._audio[:drop * 2]
            self._first += drop
