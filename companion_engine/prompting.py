"""Prompt assembly: run a pipeline's ``prompt:`` stages on a turn, in the profile's order.

The chat runner and ``POST /api/prompt/preview`` both call ``assemble_prompt``,
so the preview shows exactly what the LLM would get.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from companion_engine.cards.macros import substitute
from companion_engine.stages import LorebookInjector

if TYPE_CHECKING:
    from companion_engine.pipeline import Pipeline
    from companion_engine.turn import Turn

#: ``turn.stash`` key under which the ``history`` builder records what it kept.
HISTORY_STASH = "history"


def expand(turn: Turn, text: str) -> str:
    """Card text ready for the prompt: ``\\r\\n`` normalised, ``{{char}}``/``{{user}}`` expanded."""
    return substitute(text.replace("\r\n", "\n"), turn.char_name, turn.user_name)


async def assemble_prompt(pipeline: Pipeline, turn: Turn) -> None:
    """Build ``turn.messages`` with every prompt stage of ``pipeline``, in order.

    Whatever the stages do, the user's message ends up in the prompt: when no
    stage placed it (a profile without ``history``), it is appended last.
    """
    for stage in pipeline.prompt:
        if isinstance(stage, LorebookInjector):
            await stage.inject(turn)
        else:
            await stage.build(turn)
    if HISTORY_STASH not in turn.stash:
        logger.debug("no history builder in the profile; appending the user message")
        if turn.greeting and not turn.history:
            turn.messages.append({"role": "assistant", "content": turn.greeting})
        turn.messages.append({"role": "user", "content": turn.user_message})
