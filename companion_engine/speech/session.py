"""One turn's speech: sentences in, audio events out, in order.

The chat runner calls ``add(sentence)`` as the splitter yields each sentence
(never blocking the token stream) and ``finish()`` at the end of the reply.
A sentence becomes one *piece* per voice that speaks in it (one piece, unless
``speech.voices`` tells narration from dialogue, see ``speech.casting``); each
piece is the unit below. Behind ``add``, three kinds of task:

- one *cleaner* task feeds the pieces, lexicon applied, through the profile's
  ``speech.cleaners`` (stateful async generators, in order; what they yield
  before asking for the next piece is this piece's speech);
- *synthesis* tasks, at most ``speech.concurrency`` running at a time and only
  for pieces within a small window ahead of the one being sent, so piece n+1 is
  made while n is sent but a slow client or slow engine never piles up audio;
  each encodes its audio to the turn's format (``audio_format``) as it goes;
- one *sender* task that emits in piece order: ``audio_ready`` per piece, or
  with ``chunked_audio`` one ``audio_chunk`` per part as the backend's
  ``stream`` makes it.

``sentence`` is the text spoken (after the cleaners), ``display`` the sentence
as shown, ``voice`` the voice that spoke. A piece whose speech comes out empty
(an action, a code block, only emoji or punctuation) gets no event. A failed
synthesis gives ``audio_error`` for that piece and the rest goes on. Text that
would make the unsent backlog exceed ``speech.max_backlog_chars`` is not spoken
(``audio_error``): the reply's text goes on at full speed, its speech is bounded.
``aclose()`` cancels everything still pending.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import html
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from companion_engine.errors import StageError
from companion_engine.speech import formats
from companion_engine.speech.casting import SILENT, card_lexicon, cast_for
from companion_engine.speech.lexicon import Lexicon, lexicon
from companion_engine.speech.roles import RoleSplitter
from companion_engine.speech.wav import WavError, wav_info
from companion_engine.stages import TTSBackend

if TYPE_CHECKING:
    from companion_engine.pipeline import Pipeline
    from companion_engine.stages import Audio
    from companion_engine.turn import Turn

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]

_SPACES = re.compile(r"\s+")


def speakable(text: str) -> str:
    """The text a TTS engine should get: whitespace collapsed; empty when nothing
    pronounceable is left (only punctuation or symbols)."""
    text = _SPACES.sub(" ", text).strip()
    return text if any(ch.isalnum() for ch in text) else ""


def decoded(sentence: str) -> str:
    """The display text with HTML entities decoded, as the cleaners should see it.

    The output sanitizers may have escaped markup for display (``&lt;i&gt;``,
    ``It&#x27;s``); decoding first lets the cleaners remove the markup and the
    engine say "It's".
    """
    return html.unescape(sentence)


def turn_lexicon(turn: Turn) -> Lexicon:
    """The profile's ``speech.lexicon`` with the card's entries over it."""
    return lexicon(turn.profile.speech.lexicon, card_lexicon(turn.character))


async def speech_text(pipeline: Pipeline, text: str, turn: Turn) -> str:
    """One text through the lexicon and the profile's cleaners, as ``speakable`` speech
    (``POST /api/tts``)."""

    async def one() -> AsyncIterator[str]:
        yield turn_lexicon(turn).apply(decoded(text))

    stream: AsyncIterator[str] = one()
    for cleaner in pipeline.cleaners:
        stream = cleaner.process(stream, turn)
    parts = [part async for part in stream]
    return speakable(" ".join(parts))


@dataclass(slots=True)
class Part:
    """One playable piece of audio, already in the turn's format."""

    data: bytes
    format: str
    sample_rate: int
    duration_ms: int | None
    visemes: list[dict[str, Any]]
    final: bool = False


@dataclass(slots=True)
class SpeechItem:
    """One piece (a sentence, or one voice's part of it) on its way to audio, with the
    times it passed each step."""

    index: int
    sentence: str
    added_at: float
    expressions: list[str] = field(default_factory=list)
    #: Position among the turn's pieces; ``segment`` among its sentence's.
    pos: int = 0
    segment: int = 0
    role: str = "dialogue"
    voice: str | None = None
    #: The text handed to the cleaners (lexicon applied).
    text: str = ""
    spoken: str | None = None
    error: str | None = None
    #: Its text counts in the session's backlog until it is sent.
    counted: bool = False
    task: asyncio.Task[None] | None = None
    parts: asyncio.Queue[Part | BaseException | None] | None = None
    cleaned: asyncio.Event = field(default_factory=asyncio.Event)
    cleaned_at: float | None = None
    synth_started_at: float | None = None
    synth_done_at: float | None = None
    first_part_at: float | None = None
    emitted_at: float | None = None

    def timings(self) -> dict[str, Any]:
        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - self.added_at) * 1000, 3)

        return {"index": self.index, "segment": self.segment, "cleaned_ms": ms(self.cleaned_at),
                "synth_start_ms": ms(self.synth_started_at),
                "first_part_ms": ms(self.first_part_at),
                "synth_done_ms": ms(self.synth_done_at), "emitted_ms": ms(self.emitted_at),
                "synth_ms": None if self.synth_done_at is None or self.synth_started_at is None
                else round((self.synth_done_at - self.synth_started_at) * 1000, 3)}


class SpeechSession:
    """Cleans, synthesises and emits the audio of one turn's sentences, in order."""

    def __init__(self, pipeline: Pipeline, turn: Turn, emit: Emit) -> None:
        self.pipeline = pipeline
        self.turn = turn
        self._emit = emit
        speech = pipeline.profile.speech
        tts = pipeline.tts
        #: ``time.perf_counter()`` when the first audio event was emitted.
        self.first_audio_at: float | None = None
        #: Every piece, in order (``pos``).
        self.items: list[SpeechItem] = []
        self.sentences = 0
        #: The turn's audio format (None: as the backend makes it) and whether it is chunked.
        self.format: str | None = turn.audio_format or speech.audio_format
        self.chunked = speech.chunked_audio if turn.chunked_audio is None \
            else turn.chunked_audio
        self.cast = cast_for(turn, speech)
        self.lexicon = turn_lexicon(turn)
        self._roles = RoleSplitter() if self.cast.roles else None
        self._default_voice = _configured_voice(tts)
        self._format_error = formats.unavailable(self.format) if self.format else None
        self._max_backlog = speech.max_backlog_chars
        #: Characters of speech added and not yet sent.
        self.backlog = 0
        #: Pieces synthesised ahead of the one being sent, at most.
        self._window = speech.concurrency + 1
        #: Pieces the sender is done with.
        self._sent = 0
        #: What ``bounds`` tests and benchmarks read: peaks of pending work.
        self.peak_backlog = 0
        self.peak_synthesising = 0
        self.dropped = 0
        self._speaks = tts.speaks
        self._streams = type(tts).stream is not TTSBackend.stream
        #: Its parts can go out as they come (it says which one is the last).
        self._marks_final = self._streams and type(tts).marks_final
        self._views: dict[str | None, Turn] = {}
        self._inbox: asyncio.Queue[SpeechItem | None] = asyncio.Queue()
        self._order: asyncio.Queue[SpeechItem | None] = asyncio.Queue()
        self._cleaning: deque[SpeechItem] = deque()
        self._slots = asyncio.Semaphore(speech.concurrency)
        self._cleaner: asyncio.Task[None] | None = None
        self._cleaner_failed: str | None = None
        #: Pieces the cleaner chain yielded for the item it is on (None: none handed out).
        self._out: list[str] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._finishing = False
        self._closed = False

    # --- the runner's side ------------------------------------------------------------------

    def add(self, sentence: str) -> int:
        """Queue one sentence; returns its index. Never blocks."""
        index = self.sentences
        self.sentences += 1
        expressions = self._expressions(sentence)
        if expressions:
            self.turn.expressions[index] = expressions
        if self._closed or self._finishing:
            logger.debug("speech session closed; sentence {} not spoken", index)
            return index
        if not self._speaks:
            return index
        text = decoded(sentence)
        if self._roles is not None:
            pieces = [(seg.role, seg.text) for seg in self._roles.split(text)]
        else:
            pieces = [("dialogue", text)]
        now = time.perf_counter()
        segment = 0
        for role, piece in pieces:
            voice = self.cast.voice(role)
            if voice == SILENT:
                continue
            item = SpeechItem(index, sentence, now, expressions if segment == 0 else [],
                              pos=len(self.items), segment=segment, role=role, voice=voice,
                              text=self.lexicon.apply(piece))
            segment += 1
            self.items.append(item)
            self._queue(item)
        if segment and self._cleaner is None:
            self._cleaner = self._spawn(self._clean(), "speech-clean")
            self._sender = self._spawn(self._send(), "speech-send")
        return index

    def _queue(self, item: SpeechItem) -> None:
        size = len(item.text)
        if self._format_error is not None:
            self._fail(item, self._format_error)
        elif self._cleaner_failed is not None:
            self._fail(item, self._cleaner_failed)
        elif self.backlog + size > self._max_backlog:
            self.dropped += 1
            self._fail(item, f"not spoken: speech backlog full ({self.backlog} characters "
                             f"waiting, speech.max_backlog_chars is {self._max_backlog})")
        else:
            self.backlog += size
            item.counted = True
            self.peak_backlog = max(self.peak_backlog, self.backlog)
            self._cleaning.append(item)
            self._inbox.put_nowait(item)
        self._order.put_nowait(item)

    def _fail(self, item: SpeechItem, reason: str) -> None:
        item.error = reason
        item.cleaned.set()

    def _expressions(self, sentence: str) -> list[str]:
        """Tags every cleaner finds in the displayed sentence, in order, once each."""
        found: list[str] = []
        for cleaner in self.pipeline.cleaners:
            found.extend(tag for tag in cleaner.extract_expressions(sentence)
                         if tag not in found)
        return found

    def expressions(self, index: int) -> list[str]:
        """Expression tags (``[joy]`` -> ``"joy"``) found in sentence ``index``."""
        return self.turn.expressions.get(index, [])

    async def finish(self) -> None:
        """Wait until every sentence added so far has its events (or none, if silent)."""
        if self._finishing:
            if self._sender is not None and not self._closed:
                await asyncio.wait({self._sender})
            return
        self._finishing = True
        if self._sender is None or self._closed:
            return
        self._inbox.put_nowait(None)
        self._order.put_nowait(None)
        try:
            await self._sender
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Cancel pending cleaning and synthesis (the client went away). Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._cleaner, self._sender) if t is not None]
        tasks += [i.task for i in self.items if i.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def timings(self) -> list[dict[str, Any]]:
        """Per piece: ms from ``add`` to cleaned, synthesis start/first part/end, emission."""
        return [i.timings() for i in self.items]

    # --- tasks ------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(_log_failure)
        return task

    async def _source(self) -> AsyncIterator[str]:
        """Hand pieces to the cleaner chain, one at a time.

        The chain asks for piece k+1 only once every stage has yielded all it will
        for piece k, so what came out in between is piece k's speech: a cleaner
        that yields nothing for a piece (a filter) or several pieces never shifts
        the audio onto another piece.
        """
        while (item := await self._inbox.get()) is not None:
            self._out = []
            yield item.text
            self._settle()

    def _settle(self) -> None:
        """Close the piece the chain was working on with what it yielded."""
        if self._cleaning and self._out is not None:
            item = self._cleaning.popleft()
            spoken = " ".join(piece for piece in self._out if piece)
            self._out = None
            self._cleaned(item, spoken)

    async def _clean(self) -> None:
        """Run the cleaner chain once over all pieces."""
        stream: AsyncIterator[str] = self._source()
        chain = [stream]
        for cleaner in self.pipeline.cleaners:
            stream = cleaner.process(stream, self.turn)
            chain.append(stream)
            stream = self.pipeline.guard(cleaner, stream)
            chain.append(stream)
        try:
            async for spoken in stream:
                if self._out is None:
                    logger.warning("a speech cleaner yielded text after its sentence was "
                                   "settled; extra output ignored")
                    continue
                self._out.append(spoken)
            self._settle()  # the chain ended right after the last piece
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.opt(exception=exc.__cause__ or exc).warning("speech cleaner failed: {}", exc)
            reason = f"speech cleaner failed: {exc}"
            self._cleaner_failed = reason
            self._out = None
            while self._cleaning:
                self._fail(self._cleaning.popleft(), reason)
            # Later pieces still get their audio_error, in order (see ``_queue``).
        finally:
            for gen in reversed(chain):
                aclose = getattr(gen, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # a broken generator is already reported
                        pass
        if self._cleaning:
            logger.warning("speech cleaners ended before {} piece(s)", len(self._cleaning))
            while self._cleaning:
                self._fail(self._cleaning.popleft(), "speech cleaners ended early")

    def _cleaned(self, item: SpeechItem, spoken: str) -> None:
        item.cleaned_at = time.perf_counter()
        item.spoken = speakable(spoken)
        item.cleaned.set()
        self._kick()

    def _kick(self) -> None:
        """Start synthesis of the cleaned pieces within the window ahead of the sender."""
        if self._closed:
            return
        end = min(len(self.items), self._sent + self._window)
        for item in self.items[self._sent:end]:
            if item.task is None and item.spoken and item.error is None:
                item.parts = asyncio.Queue()
                item.task = self._spawn(self._synthesize(item), "speech-synth")
        running = sum(1 for i in self.items[self._sent:end]
                      if i.task is not None and not i.task.done())
        self.peak_synthesising = max(self.peak_synthesising, running)

    def _view(self, voice: str | None) -> Turn:
        """The turn as the backend should see it for one voice (``turn.voice``)."""
        if voice == self.turn.voice:
            return self.turn
        view = self._views.get(voice)
        if view is None:
            view = copy.copy(self.turn)
            view.voice = voice
            self._views[voice] = view
        return view

    async def _synthesize(self, item: SpeechItem) -> None:
        assert item.spoken is not None and item.parts is not None
        tts = self.pipeline.tts
        turn = self._view(item.voice)
        async with self._slots:
            item.synth_started_at = time.perf_counter()
            try:
                if self.chunked and self._streams:
                    async for audio in tts.stream(item.spoken, turn):
                        item.parts.put_nowait(await self._encode(audio))
                else:
                    audio = await tts.synthesize(item.spoken, turn)
                    audio.final = True
                    item.parts.put_nowait(await self._encode(audio))
            except asyncio.CancelledError:
                raise
            except StageError as exc:
                item.parts.put_nowait(exc)
            except Exception as exc:
                item.parts.put_nowait(self.pipeline.blame(tts, exc))
            finally:
                item.synth_done_at = time.perf_counter()
                self.turn.record("synthesis", item.synth_started_at, backend=tts.name,
                                 index=item.index, chars=len(item.spoken))
                item.parts.put_nowait(None)

    async def _encode(self, audio: Audio) -> Part:
        duration_ms, sample_rate = audio.duration_ms, audio.sample_rate
        if audio.format == "wav" and duration_ms is None:
            try:
                info = wav_info(audio.data)
                duration_ms, sample_rate = info.duration_ms, info.sample_rate
            except WavError:
                pass
        data, fmt = audio.data, audio.format
        if self.format is not None and self.format != audio.format:
            out = await formats.convert_async(audio.data, audio.format, audio.sample_rate,
                                              self.format)
            data, fmt, sample_rate = out.data, out.format, out.sample_rate
        return Part(data, fmt, sample_rate, duration_ms, audio.visemes, audio.final)

    async def _send(self) -> None:
        while (item := await self._order.get()) is not None:
            await item.cleaned.wait()
            try:
                if item.error is not None:
                    await self._emit("audio_error", self._error_event(item, item.error))
                elif item.spoken:
                    if item.task is None:
                        self._kick()
                    await self._deliver(item)
            finally:
                self._sent = item.pos + 1
                if item.counted:
                    self.backlog -= len(item.text)
                item.parts = None  # its audio is sent: let it go
                self._kick()

    async def _deliver(self, item: SpeechItem) -> None:
        """Emit one piece's audio: one ``audio_ready``, or its ``audio_chunk`` parts."""
        assert item.parts is not None
        number = 0
        offset = 0
        held: Part | None = None  # a part waiting to learn whether it is the last

        async def emit_part(part: Part, final: bool) -> None:
            nonlocal number, offset
            event = self._audio_event(item, part)
            if self.chunked:
                event.update(part=number, final=final, offset_ms=offset)
                await self._emit("audio_chunk", event)
            else:
                await self._emit("audio_ready", event)
            number += 1
            offset += part.duration_ms or 0
            if item.emitted_at is None:
                item.emitted_at = time.perf_counter()
            if self.first_audio_at is None:
                self.first_audio_at = item.emitted_at

        while True:
            got = await item.parts.get()
            if got is None:
                if held is not None:
                    await emit_part(held, True)
                return
            if isinstance(got, BaseException):
                if held is not None:
                    await emit_part(held, True)
                    held = None
                error = str(got) or type(got).__name__
                logger.warning("TTS failed for sentence {}: {}", item.index, error)
                await self._emit("audio_error", self._error_event(item, error))
                while await item.parts.get() is not None:
                    pass
                return
            if item.first_part_at is None:
                item.first_part_at = time.perf_counter()
            if held is not None:
                await emit_part(held, False)
                held = None
            if got.final or not self.chunked:
                await emit_part(got, True)
            elif self._marks_final:
                await emit_part(got, False)
            else:
                held = got

    def _audio_event(self, item: SpeechItem, part: Part) -> dict[str, Any]:
        event: dict[str, Any] = {
            "index": item.index,
            "segment": item.segment,
            "role": item.role,
            "voice": item.voice or self._default_voice,
            "sentence": item.spoken,
            "display": item.sentence,
            "format": part.format,
            "sample_rate": part.sample_rate,
            "audio": base64.b64encode(part.data).decode("ascii"),
            "duration_ms": part.duration_ms,
            "visemes": part.visemes,
        }
        if item.expressions:
            event["expression"] = item.expressions[0]
            event["expressions"] = item.expressions
        return event

    def _error_event(self, item: SpeechItem, error: str) -> dict[str, Any]:
        return {"index": item.index, "segment": item.segment, "role": item.role,
                "voice": item.voice or self._default_voice,
                "sentence": item.spoken or item.text or item.sentence,
                "display": item.sentence, "error": error}


def _configured_voice(tts: TTSBackend) -> str:
    """The voice a backend speaks when none is asked for (for the events' ``voice``)."""
    options = tts.options
    for key in ("voice", "speaker", "model"):
        value = getattr(options, key, None)
        if isinstance(value, str) and value:
            return value
    return tts.name


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.opt(exception=task.exception()).debug("{} ended with an error", task.get_name())
