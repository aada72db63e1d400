"""Runs one chat turn: prompt, LLM stream, sanitizers, splitter, speech, events, storage.

The token path is one chain of async generators iterated by the request's own
task, with no extra task or queue per token::

    LLM deltas -> output sanitizer 1 -> ... -> tap -> sentence splitter

The *tap* holds the ``content`` event of the piece it last passed on and writes
it when the splitter asks for the next piece (or the reply ends), so a sentence
the splitter completes with that piece rides on the same event as
``sentence_complete: true, sentence``. A sentence completed only by the final
flush goes out as an extra ``content`` event with empty ``content``. Sentences
also go to the ``SpeechSession`` (when speech is on), whose audio events are
written by its own task through the same serialised ``emit``.

Every turn ends with exactly one of ``done`` or ``error``, is stored by its
``TurnKind`` (``chat/kinds.py``; server-managed history: the user message
before the LLM call, the reply after it, marked ``interrupted`` when the client
left; a regenerated reply as a swipe; a continuation appended), logged in one
line and reported to ``turn_completed``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from companion_engine.chat.kinds import NewMessage, TurnKind
from companion_engine.chat.sse import ClientGone, SSEWriter, timestamp
from companion_engine.errors import ApiError, StageError, TurnError
from companion_engine.llm import LLMError, LLMStream
from companion_engine.prompting import assemble_prompt
from companion_engine.shared import StoreUnavailable
from companion_engine.tokens import estimate_tokens
from companion_engine.turn import TurnResult

if TYPE_CHECKING:
    from companion_engine.engine import Engine
    from companion_engine.pipeline import Pipeline
    from companion_engine.speech.session import SpeechSession
    from companion_engine.turn import Turn

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]

__all__ = ["Emit", "TurnResult", "TurnRunner"]


def engine_failure(exc: BaseException) -> StageError:
    """An exception no stage owns (a bug in the engine itself), as a turn error."""
    return StageError(f"the engine failed: {type(exc).__name__}: {exc}")


def _ms(start: float, t: float | None) -> float | None:
    return None if t is None else round((t - start) * 1000, 1)


class TurnRunner:
    """One turn on one leased pipeline. ``prepare()`` before any response is sent."""

    def __init__(self, engine: Engine, pipeline: Pipeline, turn: Turn, *, speak: bool,
                 store_history: bool, kind: TurnKind | None = None) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.turn = turn
        self.speak = speak
        self.store_history = store_history
        #: What this kind of turn adds to a plain one (``chat/kinds.py``): its prompt's
        #: tail, its text, its storage. None: client-managed history, nothing stored.
        self.kind = (kind or NewMessage()) if store_history else None
        self.provider = turn.model
        self.result = TurnResult()
        self._failure: StageError | None = None
        #: The reply's storage, once started (``_store_reply``).
        self._stored: asyncio.Future[None] | None = None
        #: While True, a client leaving cancels the turn's task (not once it is finishing).
        self._cancellable = False
        self._emit: Emit
        self._speech: SpeechSession | None = None
        self._llm: LLMStream | None = None
        self._gens: list[Any] = []
        # The tap's state.
        self._parts: list[str] = []
        self._pending: str | None = None
        self._pending_sentence: str | None = None
        self._chunk_index = 0
        self._source_done = False
        self._first_token_at: float | None = None
        #: When the LLM request was sent (until its span is recorded).
        self._llm_started: float | None = None
        self._first_sentence_at: float | None = None
        #: When set, an interrupted reply is stored and reported as ``clip(content)``: the
        #: WebSocket keeps only the sentences whose audio was sent, never the unheard rest.
        self.clip_interrupted: Callable[[str], str] | None = None

    @property
    def content(self) -> str:
        """The reply so far, as streamed through the output sanitizers."""
        return "".join(self._parts)

    # --- phases ---------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Assemble the prompt. ``ApiError`` (bad request) propagates; a failing stage is
        remembered and reported as ``stage_error`` once the stream is open."""
        try:
            await assemble_prompt(self.pipeline, self.turn)
        except ApiError:
            raise
        except StageError as exc:
            self._failure = exc
            logger.opt(exception=exc.__cause__ or exc).warning("prompt assembly failed: {}", exc)
            return
        if self.kind is not None:
            self.kind.arrange(self.turn)

    async def stream_to(self, writer: SSEWriter, emit: Emit | None = None) -> TurnResult:
        """Run the turn writing SSE (through ``emit``, default ``writer.send``: another
        wire format may translate the events); a client that leaves cancels it at once."""
        task = asyncio.current_task()
        assert task is not None
        left = False

        def client_left() -> None:
            nonlocal left
            if self._cancellable:
                left = True
                task.cancel()

        self._cancellable = True
        watcher = asyncio.create_task(writer.watch(client_left), name="sse-watch")
        try:
            return await self.run(emit or writer.send)
        except asyncio.CancelledError:
            if not left:
                raise
            task.uncancel()  # our watcher's doing: the client left and the turn is over
            return self.result
        finally:
            self._cancellable = False
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def run(self, emit: Emit) -> TurnResult:
        """The whole turn; returns how it ended (errors are events, not exceptions)."""
        self._emit = emit
        turn = self.turn
        await self.engine.plugins.call("turn_started", engine=self.engine, turn=turn)
        try:
            await self._store_request()
            if self._failure is not None:
                raise self._failure
            self._llm = self.engine.llm.stream(turn)
            self._llm_started = time.perf_counter()
            await self._llm.open()
            await emit("provider_connected", {
                "provider": self.provider, "type": self._llm.target.type,
                "model": turn.model, "character": self._character_name,
                "character_id": self._character_id,
                "conversation_id": turn.conversation_id, "timestamp": timestamp()})
            if self.speak:
                self._speech = self._new_speech()
            await self._pump(self._llm)
            turn.record("llm", self._llm_started, model=turn.model)
            self._llm_started = None
            await self._close_chain()
            if self._speech is not None:
                await self._speech.finish()
            self.result.status = "complete"
            self._finish_timings()
            done = self._done_event()
            await self._store_reply()  # acknowledged (done) only once it is stored
            await emit("done", done)
        except (ClientGone, asyncio.CancelledError) as exc:
            self.result.status = "interrupted"
            if isinstance(exc, asyncio.CancelledError):
                raise
        except TurnError as exc:
            if not isinstance(exc, LLMError):
                logger.opt(exception=exc.__cause__ or exc).warning("turn failed: {}", exc)
            await self._fail(exc.type, str(exc))
        except StoreUnavailable as exc:  # Redis away: the client may retry (503)
            await self._fail("store_unavailable", str(exc))
        except Exception as exc:
            failure = engine_failure(exc)
            logger.opt(exception=exc).error("turn failed: {}", failure)
            await self._fail(failure.type, str(failure))
        finally:
            await self._finish()
        return self.result

    # --- the token path -------------------------------------------------------------------

    async def _pump(self, llm: LLMStream) -> None:
        pipeline, turn = self.pipeline, self.turn
        chain: AsyncIterator[str] = llm.deltas()
        self._gens.append(chain)
        if self.kind is not None:
            chain = self.kind.source(chain, turn)
            self._gens.append(chain)
        for sanitizer in pipeline.output:
            chain = self._guarded(sanitizer, sanitizer.process(chain, turn))
        if self.kind is not None:  # a continuation's joiner, a group speaker's name
            chain = self.kind.deltas(chain, turn)
            self._gens.append(chain)
        tapped = self._tap(chain)
        self._gens.append(tapped)
        sentences = self._guarded(pipeline.splitter, pipeline.splitter.split(tapped, turn))
        async for sentence in sentences:
            await self._sentence(sentence)

    def _guarded(self, stage: Any, gen: AsyncIterator[str]) -> AsyncIterator[str]:
        """A stage's generator, its failures blamed on it; both closed at the end."""
        guarded = self.pipeline.guard(stage, gen)
        self._gens += (gen, guarded)
        return guarded

    async def _tap(self, source: AsyncIterator[str]) -> AsyncIterator[str]:
        turn = self.turn
        async for piece in source:
            if turn.finish_reason is not None:
                break  # a stage called turn.stop(): nothing more from the LLM
            if not piece:
                continue
            if self._first_token_at is None:
                self._first_token_at = time.perf_counter()
            self._parts.append(piece)
            self._pending = piece
            yield piece
            await self._flush()  # the splitter asks for more: this piece's event goes out
            if turn.finish_reason is not None:
                break
        self._source_done = True

    async def _sentence(self, sentence: str) -> None:
        if self._first_sentence_at is None:
            self._first_sentence_at = time.perf_counter()
        if self._speech is not None:
            self._speech.add(sentence)
        if self._pending is None or self._pending_sentence is not None:
            await self._flush()
            self._pending = ""  # a sentence with no new text of its own
        self._pending_sentence = sentence
        if self._source_done:
            await self._flush()

    async def _flush(self) -> None:
        content = self._pending
        if content is None:
            return
        self._pending = None
        data: dict[str, Any] = {"content": content, "provider": self.provider,
                                "chunk_index": self._chunk_index, "timestamp": timestamp()}
        if self._pending_sentence is not None:
            data["sentence_complete"] = True
            data["sentence"] = self._pending_sentence
            self._pending_sentence = None
        self._chunk_index += 1
        await self._emit("content", data)

    # --- helpers --------------------------------------------------------------------------

    @property
    def _character_name(self) -> str | None:
        return self.turn.character.display_name if self.turn.character else None

    @property
    def _character_id(self) -> str | None:
        return self.turn.character.id or None if self.turn.character else None

    def _new_speech(self) -> SpeechSession:
        from companion_engine.speech.session import SpeechSession

        return SpeechSession(self.pipeline, self.turn, self._emit)

    async def _close_chain(self) -> None:
        """Close the generators (last first) and the LLM response: the provider stops."""
        gens, self._gens = self._gens, []
        for gen in reversed(gens):
            try:
                await gen.aclose()
            except Exception as exc:  # a stage failing to close must not hide the turn
                logger.debug("closing {} failed: {}", gen, exc)
        if self._llm is not None:
            await self._llm.aclose()

    async def _fail(self, kind: str, message: str) -> None:
        self.result.status = "error"
        self.result.error = {"type": kind, "provider": self.provider, "error": message}
        try:
            await self._emit("error", {**self.result.error, "timestamp": timestamp()})
        except ClientGone:
            self.result.status = "interrupted"

    def _finish_timings(self) -> None:
        start = self.turn.started_at
        first_audio = self._speech.first_audio_at if self._speech is not None else None
        self.result.timings = {
            "ttft_ms": _ms(start, self._first_token_at),
            "first_sentence_ms": _ms(start, self._first_sentence_at),
            "ttfa_ms": _ms(start, first_audio),
            "total_ms": _ms(start, time.perf_counter()),
        }

    def _usage(self) -> dict[str, Any]:
        if self._llm is not None and self._llm.usage and self._llm.usage.get("total_tokens"):
            return dict(self._llm.usage)
        prompt = estimate_tokens("".join(m["content"] for m in self.turn.messages))
        completion = estimate_tokens(self.result.content)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion, "estimated": True}

    def _done_event(self) -> dict[str, Any]:
        self.result.content = "".join(self._parts)
        self.result.usage = self._usage()
        self.result.finish_reason = self.turn.finish_reason or (
            self._llm.finish_reason if self._llm else None)
        self.result.chunk_count = self._chunk_index
        return {
            "provider": self.provider, "model": self.turn.model,
            "chunk_count": self.result.chunk_count, "full_content": self.result.content,
            "character": self._character_name, "character_id": self._character_id,
            "conversation_id": self.turn.conversation_id,
            "usage": self.result.usage, "finish_reason": self.result.finish_reason,
            "timings": self.result.timings, "timestamp": timestamp(),
        }

    # --- storage and the end of a turn ----------------------------------------------------

    async def _store_request(self) -> None:
        """What the turn starts with (the user's message, a new conversation's greeting),
        before the LLM call."""
        if self.kind is not None:
            await self.kind.before(self.engine.store, self.turn)

    async def _store_reply(self) -> None:
        """Store the reply, once: the write runs as its own task, so a client leaving
        mid-write cannot cut it short, and a second call waits for the first."""
        if self._stored is None:
            self.turn.result = self.result
            self._stored = asyncio.ensure_future(self._write_reply())
        await asyncio.shield(self._stored)

    async def _write_reply(self) -> None:
        if self.kind is not None:
            await self.kind.after(self.engine.store, self.turn, self.result)

    async def _finish(self) -> None:
        """Release everything, store the reply, log once, tell the plugins. Never raises."""
        self._cancellable = False
        if self._llm_started is not None:  # an interrupted or failed stream: still timed
            self.turn.record("llm", self._llm_started, model=self.turn.model)
        await self._close_chain()
        if self._speech is not None and self.result.status != "complete":
            await self._speech.aclose()
        if not self.result.content:
            self.result.content = "".join(self._parts)
        if self.result.status == "interrupted" and self.clip_interrupted is not None:
            self.result.content = self.clip_interrupted(self.result.content)
        if not self.result.timings:
            self._finish_timings()
        self.result.chunk_count = self._chunk_index
        if self.result.finish_reason is None:
            self.result.finish_reason = self.turn.finish_reason
        self.turn.result = self.result
        try:
            await self._store_reply()
        except Exception as exc:
            logger.opt(exception=exc).error("storing the reply of {} failed",
                                            self.turn.conversation_id)
            if isinstance(exc, StoreUnavailable) and self.result.error is None:
                # Not stored, so not acknowledged: /api/chat answers 503, not 200.
                self.result.status = "error"
                self.result.error = {"type": "store_unavailable", "provider": self.provider,
                                     "error": str(exc)}
        t = self.result.timings
        logger.info("turn {} model={} conversation={} chunks={} chars={} ttft_ms={} "
                    "first_sentence_ms={} ttfa_ms={} total_ms={}", self.result.status,
                    self.turn.model, self.turn.conversation_id, self._chunk_index,
                    len(self.result.content), t.get("ttft_ms"), t.get("first_sentence_ms"),
                    t.get("ttfa_ms"), t.get("total_ms"))
        await self.engine.plugins.call("turn_completed", engine=self.engine, turn=self.turn)
