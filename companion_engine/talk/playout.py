"""One reply's audio to a WebSocket client at playback speed, stoppable between two frames.

Sending audio as fast as it is synthesised would put the whole reply in the
client's buffer in a second; a barge-in could then stop nothing the server
controls, and "what was sent" would say nothing about what was heard. So the
audio goes out paced: at most ``lead_ms`` ahead of the client's playback clock
(a frame is sent once the client has less than that left to play), in frames
of ``frame_ms``. Then:

- ``hold()`` (the user may be starting to speak) stops sending at the next frame;
  ``release()`` (a false start) goes on where it was, and the lead covers the gap;
- ``stop()`` (barge-in) ends it: nothing more is sent, the frames not yet sent are
  dropped, and ``last_index`` says which sentence was the last to go out.

``await put(name, event)`` queues a turn's ``audio_ready`` or ``audio_chunk``
(base64 audio; a chunk is one part of a sentence, ``final`` on its last) or
``audio_error`` event; one sender task sends them in order, paced, and the queue
holds one sentence, so the turn's speech session is never more than a sentence
ahead of what was sent. ``await drain()`` waits until everything queued was
sent: the session calls it before passing the turn's ``done`` on, so a turn is
not over while its audio is still going out (and a barge-in during the last
sentence still finds it running). In ``frames`` mode a sentence is
``audio_start`` (JSON: index, text, format ``pcm16``, sample rate, bytes,
duration, visemes), binary PCM16 frames (of every part, for chunked audio),
``audio_end``; in ``events`` mode it is the ``audio_ready``/``audio_chunk``
event itself, paced by its duration.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from companion_engine.speech.wav import WavError, wav_info

SendJSON = Callable[[str, dict[str, Any]], Awaitable[None]]
SendBytes = Callable[[bytes], Awaitable[None]]
AudioMode = Literal["frames", "events"]

#: Audio in one binary frame.
FRAME_MS = 40


def wav_pcm(data: bytes) -> tuple[bytes, int] | None:
    """(PCM16 samples, rate) of a mono 16-bit WAV file; None for anything else."""
    try:
        info = wav_info(data)
    except WavError:
        return None
    if info.channels != 1 or info.sample_width != 2:
        return None
    start = _data_start(data)
    if start is None:
        return None
    return data[start:start + info.frames * 2], info.sample_rate


def _data_start(data: bytes) -> int | None:
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        if data[pos:pos + 4] == b"data":
            return pos + 8
        pos += 8 + size + (size & 1)
    return None


class Playout:
    """Paces the audio of one turn; see the module docstring."""

    def __init__(self, send_json: SendJSON, send_bytes: SendBytes, *, mode: AudioMode = "frames",
                 lead_ms: int = 300, frame_ms: int = FRAME_MS) -> None:
        self._send_json = send_json
        self._send_bytes = send_bytes
        self.mode = mode
        self.lead_s = lead_ms / 1000
        self.frame_ms = frame_ms
        #: When the client's buffer runs dry if nothing more is sent (monotonic seconds).
        self._buffer_end = 0.0
        self._released = asyncio.Event()
        self._released.set()
        self._wake = asyncio.Event()
        self.stopped = False
        #: The last sentence index of which any audio went out (None: nothing yet).
        self.last_index: int | None = None
        #: ``time.perf_counter()`` of the first and the last audio sent.
        self.first_sent_at: float | None = None
        self.last_sent_at: float | None = None
        #: Milliseconds of audio sent.
        self.sent_ms = 0.0
        self._open_index: int | None = None
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(1)
        self._sender: asyncio.Task[None] | None = None
        #: Set when the sender failed (the client went away): ``put``/``drain`` re-raise it.
        self.error: BaseException | None = None

    @property
    def playing(self) -> bool:
        """Whether the client still has audio to play (by the server's clock)."""
        return time.monotonic() < self._buffer_end

    def remaining_s(self) -> float:
        return max(0.0, self._buffer_end - time.monotonic())

    # --- control (called by the session, any time) ------------------------------------------

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        """No more audio, now: the frames not yet sent are dropped. Idempotent."""
        self.stopped = True
        self._released.set()
        self._wake.set()
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
        if self._sender is not None:
            self._sender.cancel()

    async def aclose(self) -> None:
        """Stop and wait for the sender task to end."""
        self.stop()
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)

    # --- the turn's side ----------------------------------------------------------------------

    async def put(self, name: str, event: dict[str, Any]) -> None:
        """Queue an ``audio_ready`` or ``audio_error`` event; waits while one is queued."""
        if self.error is not None:
            raise self.error
        if self.stopped:
            return
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_all())
            self._sender.set_name("ws-playout")
        await self._while_sending(self._queue.put((name, event)))

    async def drain(self) -> None:
        """Wait until every queued event was sent (or the playout stopped)."""
        if self._sender is None or self.stopped:
            return
        await self._while_sending(self._queue.join())
        if self.error is not None:
            raise self.error

    async def _while_sending(self, waiting: Awaitable[None]) -> None:
        """Await ``waiting`` unless the sender ends first (stopped or failed)."""
        assert self._sender is not None
        task = asyncio.ensure_future(waiting)
        try:
            await asyncio.wait({task, self._sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _send_all(self) -> None:
        try:
            while True:
                name, event = await self._queue.get()
                try:
                    if name in ("audio_ready", "audio_chunk"):
                        await self.play(name, event)
                    else:
                        await self._send_json(name, event)
                finally:
                    self._queue.task_done()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away: the turn sees it at its next put
            self.error = exc
            self.stopped = True

    async def play(self, name: str, event: dict[str, Any]) -> None:
        """Send one ``audio_ready`` (or ``audio_chunk``) event's audio, paced; returns when
        it is all sent (or the playout stopped)."""
        pcm = None
        fmt = event.get("format", "wav")
        if self.mode == "frames" and fmt in ("wav", "pcm16"):
            try:
                raw = base64.b64decode(event.get("audio") or "")
            except ValueError:
                raw = b""
            if fmt == "wav":
                pcm = wav_pcm(raw)
            elif raw and int(event.get("sample_rate") or 0) > 0:
                pcm = raw[:len(raw) // 2 * 2], int(event["sample_rate"])
        if pcm is None:
            await self._play_event(name, event)
        else:
            await self._play_frames(event, *pcm)

    async def _play_event(self, name: str, event: dict[str, Any]) -> None:
        if not await self._pace():
            return
        await self._send_json(name, event)
        self._sent(event["index"], float(event.get("duration_ms") or 0))

    async def _play_frames(self, event: dict[str, Any], pcm: bytes, rate: int) -> None:
        index = event["index"]
        part = event.get("part")
        final = event.get("final", True)
        if self._open_index != index or not part:
            meta = {k: v for k, v in event.items()
                    if k not in ("audio", "part", "final", "offset_ms")}
            whole = final is not False  # a sentence in parts: its length is not known yet
            meta.update(format="pcm16", sample_rate=rate, bytes=len(pcm) if whole else None)
            if not whole:
                meta["duration_ms"] = None
            if not await self._pace():
                return
            await self._send_json("audio_start", meta)
            self._open_index = index
        step = max(2, rate * self.frame_ms // 1000 * 2)
        for start in range(0, len(pcm), step):
            if not await self._pace():
                return
            frame = pcm[start:start + step]
            await self._send_bytes(frame)
            self._sent(index, len(frame) / 2 * 1000 / rate)
        if final is not False:
            self._open_index = None
            await self._send_json("audio_end", {"index": index})

    async def _pace(self) -> bool:
        """Wait until the client's buffer is below the lead (and not held); False: stopped."""
        while True:
            if self.stopped:
                return False
            if not self._released.is_set():
                await self._released.wait()
                continue
            wait = self._buffer_end - time.monotonic() - self.lead_s
            if wait <= 0:
                return True
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    def _sent(self, index: int, duration_ms: float) -> None:
        now = time.monotonic()
        self._buffer_end = max(self._buffer_end, now) + duration_ms / 1000
        self.sent_ms += duration_ms
        self.last_index = index
        self.last_sent_at = time.perf_counter()
        if self.first_sent_at is None:
            self.first_sent_at = self.last_sent_at
