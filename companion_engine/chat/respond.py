"""Answering a request with its planned turns: one SSE stream carrying one or more turns
(a group chat's speakers, one after the other), or one JSON reply.

The first turn is built and its prompt assembled before anything is sent, so a bad
request is still an HTTP error. Each later turn is built only once the one before
it is stored (it answers it), and the stream ends after the first turn that does
not complete (an error, or the client leaving).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from loguru import logger

from companion_engine.chat.runner import TurnResult, TurnRunner
from companion_engine.chat.sse import SSEWriter
from companion_engine.errors import ApiError
from companion_engine.speech import formats

if TYPE_CHECKING:
    from companion_engine.chat.turns import PlannedTurn
    from companion_engine.engine import Engine
    from companion_engine.pipeline import Pipeline


def wants_speech(pipeline: Pipeline, enable_tts: bool | None, audio_format: str | None) -> bool:
    """Whether the turns speak; 422 for an audio format this install cannot encode."""
    speak = enable_tts if enable_tts is not None else pipeline.profile.speech.enabled
    if speak and audio_format:
        why = formats.unavailable(audio_format)  # type: ignore[arg-type]
        if why is not None:
            raise ApiError(422, why)
    return speak


async def prepared(engine: Engine, pipeline: Pipeline, planned: PlannedTurn, *,
                   speak: bool) -> TurnRunner:
    runner = TurnRunner(engine, pipeline, planned.turn, speak=speak,
                        store_history=planned.kind is not None, kind=planned.kind)
    await runner.prepare()
    return runner


async def stream_turns(request: web.Request, engine: Engine, pipeline: Pipeline,
                       turns: AsyncIterator[PlannedTurn], *, speak: bool,
                       opening: tuple[str, dict[str, Any]] | None = None) -> web.StreamResponse:
    """Every planned turn on one SSE stream (``opening``: an event to send first, e.g. a
    spoken request's ``transcript``)."""
    try:
        runner = await prepared(engine, pipeline, await anext(turns), speak=speak)
        writer = await SSEWriter.open(request)
        if opening is not None:
            await writer.send(*opening)
        while True:
            result = await runner.stream_to(writer)
            if result.status != "complete":
                break
            try:
                planned = await anext(turns)
            except StopAsyncIteration:
                break
            except ApiError as exc:  # e.g. a member's card deleted meanwhile
                logger.info("group chat {}: no further reply: {}",
                            runner.turn.conversation_id, exc.error)
                break
            runner = await prepared(engine, pipeline, planned, speak=speak)
        await writer.close()
    finally:
        await turns.aclose()  # type: ignore[attr-defined]
    return writer.response


async def _discard(event: str, data: dict[str, Any]) -> None:
    """A JSON reply sends no events: the reply is the result."""


async def run_turns(engine: Engine, pipeline: Pipeline, turns: AsyncIterator[PlannedTurn]
                    ) -> list[tuple[TurnRunner, TurnResult]]:
    """Every planned turn, without events (``/api/chat``); stops after one that fails."""
    done: list[tuple[TurnRunner, TurnResult]] = []
    try:
        async for planned in turns:
            runner = await prepared(engine, pipeline, planned, speak=False)
            result = await runner.run(_discard)
            done.append((runner, result))
            if result.status != "complete":
                break
    except ApiError:
        if not done:
            raise
    finally:
        await turns.aclose()  # type: ignore[attr-defined]
    return done


async def single(turn: PlannedTurn) -> AsyncIterator[PlannedTurn]:
    """One planned turn as a sequence."""
    yield turn
