"""One turn's speech: sentences in, ``audio_ready`` / ``audio_error`` events out, in order.

The chat runner calls ``add(sentence)`` as the splitter yields each sentence
(never blocking the token stream) and ``finish()`` at the end of the reply.
Behind it, three kinds of task:

- one *cleaner* task feeds the sentences through the profile's
  ``speech.cleaners`` (stateful async generators, in order; what they yield
  before asking for the next sentence is this sentence's speech) and schedules
  synthesis of each cleaned sentence at once;
- *synthesis* tasks, at most ``speech.concurrency`` running at a time, so
  sentence n+1 is being made while n is sent;
- one *sender* task that awaits the syntheses in sentence order and emits.

``audio_ready.sentence`` is the text spoken (after the cleaners), ``display``
the sentence as shown. A sentence whose speech text comes out empty (an
action, a code block, only emoji or punctuation) is not spoken and gets no
audio event; its index is simply skipped. A failed synthesis gives
``audio_error`` for that index and the rest goes on. ``aclose()`` cancels
everything still pending.
"""

from __future__ import annotations

import asyncio
import base64
import html
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from companion_engine.errors import StageError
from companion_engine.speech.wav import WavError, wav_info

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


async def speech_text(pipeline: Pipeline, text: str, turn: Turn) -> str:
    """One text through the profile's cleaners, as ``speakable`` speech (``POST /api/tts``)."""

    async def one() -> AsyncIterator[str]:
        yield decoded(text)

    stream: AsyncIterator[str] = one()
    for cleaner in pipeline.cleaners:
        stream = cleaner.process(stream, turn)
    parts = [part async for part in stream]
    return speakable(" ".join(parts))


@dataclass(slots=True)
class SpeechItem:
    """One sentence on its way to audio, with the times it passed each step."""

    index: int
    sentence: str
    added_at: float
    expressions: list[str] = field(default_factory=list)
    spoken: str | None = None
    error: str | None = None
    task: asyncio.Task[Audio] | None = None
    cleaned_at: float | None = None
    synth_started_at: float | None = None
    synth_done_at: float | None = None
    emitted_at: float | None = None

    def timings(self) -> dict[str, Any]:
        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - self.added_at) * 1000, 3)

        return {"index": self.index, "cleaned_ms": ms(self.cleaned_at),
                "synth_start_ms": ms(self.synth_started_at),
                "synth_done_ms": ms(self.synth_done_at), "emitted_ms": ms(self.emitted_at),
                "synth_ms": None if self.synth_done_at is None or self.synth_started_at is None
                else round((self.synth_done_at - self.synth_started_at) * 1000, 3)}


class SpeechSession:
    """Cleans, synthesises and emits the audio of one turn's sentences, in order."""

    def __init__(self, pipeline: Pipeline, turn: Turn, emit: Emit) -> None:
        self.pipeline = pipeline
        self.turn = turn
        self._emit = emit
        #: ``time.perf_counter()`` when the first ``audio_ready`` was emitted.
        self.first_audio_at: float | None = None
        self.items: list[SpeechItem] = []
        self._speaks = pipeline.tts.speaks
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._ready: asyncio.Queue[SpeechItem | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(pipeline.profile.speech.concurrency)
        self._cleaner: asyncio.Task[None] | None = None
        #: Pieces the cleaner chain yielded for the sentence it is on (None: none handed out).
        self._out: list[str] | None = None
        #: Sentences whose speech text is settled.
        self._settled = 0
        self._sender: asyncio.Task[None] | None = None
        self._finishing = False
        self._closed = False

    # --- the runner's side ------------------------------------------------------------------

    def add(self, sentence: str) -> int:
        """Queue one sentence; returns its index. Never blocks."""
        index = len(self.items)
        item = SpeechItem(index, sentence, time.perf_counter())
        item.expressions = self._expressions(sentence)
        if item.expressions:
            self.turn.expressions[index] = item.expressions
        self.items.append(item)
        if self._closed or self._finishing:
            logger.debug("speech session closed; sentence {} not spoken", index)
            return index
        if not self._speaks:
            return index
        if self._cleaner is None:
            self._cleaner = self._spawn(self._clean(), "speech-clean")
            self._sender = self._spawn(self._send(), "speech-send")
        self._inbox.put_nowait(decoded(sentence))
        return index

    def _expressions(self, sentence: str) -> list[str]:
        """Tags every cleaner finds in the displayed sentence, in order, once each."""
        found: list[str] = []
        for cleaner in self.pipeline.cleaners:
            found.extend(tag for tag in cleaner.extract_expressions(sentence)
                         if tag not in found)
        return found

    def expressions(self, index: int) -> list[str]:
        """Expression tags (``[joy]`` -> ``"joy"``) found in sentence ``index``."""
        return self.items[index].expressions if 0 <= index < len(self.items) else []

    async def finish(self) -> None:
        """Wait until every sentence added so far has its event (or none, if silent)."""
        if self._finishing:
            if self._sender is not None and not self._closed:
                await asyncio.wait({self._sender})
            return
        self._finishing = True
        if self._sender is None or self._closed:
            return
        self._inbox.put_nowait(None)
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
        """Per sentence: ms from ``add`` to cleaned, synthesis start/end and emission."""
        return [i.timings() for i in self.items]

    # --- tasks ------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(_log_failure)
        return task

    async def _source(self) -> AsyncIterator[str]:
        """Hand sentences to the cleaner chain, one at a time.

        The chain asks for sentence k+1 only once every stage has yielded all it
        will for sentence k, so what came out in between is sentence k's speech:
        a cleaner that yields nothing for a sentence (a filter) or several pieces
        never shifts the audio onto another sentence's index.
        """
        while (sentence := await self._inbox.get()) is not None:
            self._out = []
            yield sentence
            self._settle()

    def _settle(self) -> None:
        """Close the sentence the chain was working on with what it yielded."""
        index = self._settled
        if index < len(self.items) and self._out is not None:
            self._settled += 1
            spoken = " ".join(piece for piece in self._out if piece)
            self._out = None
            self._cleaned(self.items[index], spoken)

    async def _clean(self) -> None:
        """Run the cleaner chain once over all sentences; schedule synthesis per sentence."""
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
            self._settle()  # the chain ended right after the last sentence
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.opt(exception=exc.__cause__ or exc).warning("speech cleaner failed: {}", exc)
            reason = f"speech cleaner failed: {exc}"
            self._out = None
            for item in self.items[self._settled:]:
                item.error = reason
                self._ready.put_nowait(item)
            self._settled = len(self.items)
            # Later sentences still get their audio_error, in order.
            while await self._inbox.get() is not None:
                item = self.items[self._settled]
                self._settled += 1
                item.error = reason
                self._ready.put_nowait(item)
        finally:
            for gen in reversed(chain):
                aclose = getattr(gen, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # a broken generator is already reported
                        pass
        if self._settled < len(self.items):
            logger.warning("speech cleaners ended after {} of {} sentences",
                           self._settled, len(self.items))
        self._ready.put_nowait(None)

    def _cleaned(self, item: SpeechItem, spoken: str) -> None:
        item.cleaned_at = time.perf_counter()
        item.spoken = speakable(spoken)
        if item.spoken:
            item.task = asyncio.ensure_future(self._synthesize(item))
        self._ready.put_nowait(item)

    async def _synthesize(self, item: SpeechItem) -> Audio:
        assert item.spoken is not None
        async with self._slots:
            item.synth_started_at = time.perf_counter()
            tts = self.pipeline.tts
            try:
                return await tts.synthesize(item.spoken, self.turn)
            except (asyncio.CancelledError, StageError):
                raise
            except Exception as exc:
                raise self.pipeline.blame(tts, exc) from exc
            finally:
                item.synth_done_at = time.perf_counter()

    async def _send(self) -> None:
        while (item := await self._ready.get()) is not None:
            if item.error is None and item.task is None:
                continue  # nothing to say for this sentence
            audio = None
            if item.error is None and item.task is not None:
                try:
                    audio = await item.task
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    item.error = str(exc) or type(exc).__name__
                    logger.warning("TTS failed for sentence {}: {}", item.index, item.error)
            if audio is None:
                await self._emit("audio_error", {
                    "index": item.index, "sentence": item.spoken or item.sentence,
                    "display": item.sentence, "error": item.error})
                continue
            await self._emit("audio_ready", audio_event(item, audio))
            item.emitted_at = time.perf_counter()
            if self.first_audio_at is None:
                self.first_audio_at = item.emitted_at


def audio_event(item: SpeechItem, audio: Audio) -> dict[str, Any]:
    """The ``audio_ready`` payload of one sentence."""
    duration_ms = audio.duration_ms
    sample_rate = audio.sample_rate
    if audio.format == "wav" and duration_ms is None:
        try:
            info = wav_info(audio.data)
            duration_ms, sample_rate = info.duration_ms, info.sample_rate
        except WavError:
            pass
    event: dict[str, Any] = {
        "index": item.index,
        "sentence": item.spoken,
        "display": item.sentence,
        "format": audio.format,
        "sample_rate": sample_rate,
        "audio": base64.b64encode(audio.data).decode("ascii"),
        "duration_ms": duration_ms,
        "visemes": audio.visemes,
    }
    if item.expressions:
        event["expression"] = item.expressions[0]
        event["expressions"] = item.expressions
    return event


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.opt(exception=task.exception()).debug("{} ended with an error", task.get_name())
