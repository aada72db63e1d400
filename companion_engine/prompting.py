"""Prompt assembly: run a pipeline's ``prompt:`` stages on a turn, in the profile's order.

The chat runner and ``POST /api/prompt/preview`` both call ``assemble_prompt``,
so the preview shows exactly what the LLM would get.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from loguru import logger

from companion_engine.cards.macros import evaluate, macro_context
from companion_engine.errors import ApiError
from companion_engine.stages import LorebookInjector

if TYPE_CHECKING:
    from companion_engine.pipeline import Pipeline
    from companion_engine.turn import Turn


def expand(turn: Turn, text: str) -> str:
    """Card text ready for the prompt: ``\\r\\n`` normalised, every macro expanded."""
    text = text.replace("\r\n", "\n")
    if "{" not in text and "<" not in text:
        return text
    return evaluate(text, macro_context(turn))


async def assemble_prompt(pipeline: Pipeline, turn: Turn) -> None:
    """Build ``turn.messages`` with every prompt stage of ``pipeline``, in order.

    A stage that raises is reported as a ``StageError`` naming it (an ``ApiError``,
    a bad request such as a missing greeting, passes through). Whatever the stages
    do, the user's message ends up in the prompt exactly once: when no stage placed
    ``turn.user_entry`` (a profile without ``history``), it is appended last, after
    the greeting of a new conversation.
    """
    began = time.perf_counter()
    for stage in pipeline.prompt:
        start = time.perf_counter()
        try:
            if isinstance(stage, LorebookInjector):
                await stage.inject(turn)
                kind = "lorebook_injector"
            else:
                await stage.build(turn)
                kind = "prompt_builder"
        except ApiError:
            raise
        except Exception as exc:
            raise pipeline.blame(stage, exc) from exc
        turn.record("prompt_stage", start, stage=stage.name, kind=kind)
    if turn.user_index is None:
        logger.debug("no prompt stage placed the user message; appending it")
        if turn.greeting and not turn.history:
            turn.messages.append({"role": "assistant", "content": turn.greeting})
        turn.messages.append(turn.user_entry)
    turn.record("prompt", began)
