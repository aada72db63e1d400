"""Recent history: a replacement for the built-in ``history`` prompt stage.

It keeps the last ``max_messages`` messages of the conversation (a count, not a token
budget), opens a new conversation with the card's greeting, inserts the lorebook's
at-depth entries, and places the turn's own message object (``turn.user_entry``), so the
engine knows the user's message is in the prompt and never adds it a second time. It
reports what it kept as ``turn.history_info`` (``POST /api/prompt/preview`` shows it).
"""

from __future__ import annotations

from typing import ClassVar

from companion_engine import HistoryInfo, Message, PromptBuilder, StageOptions, Turn, hookimpl
from pydantic import Field


class RecentHistory(PromptBuilder):
    """The newest ``max_messages`` messages, then the user's message."""

    name: ClassVar[str] = "recent_history"
    description: ClassVar[str] = "the last N messages (example history builder)"

    class Options(StageOptions):
        max_messages: int = Field(default=6, ge=0, le=1000)

    options: Options

    async def build(self, turn: Turn) -> None:
        earlier: list[Message] = list(turn.history)
        if not earlier and turn.greeting:
            earlier = [{"role": "assistant", "content": turn.greeting}]
        n = self.options.max_messages
        kept = earlier[-n:] if n else []
        chat: list[Message] = [*kept, turn.user_entry]
        for depth, role, text in turn.depth_injections:
            chat.insert(max(0, len(chat) - depth), {"role": role, "content": text})
        turn.messages.extend(chat)
        turn.history_info = HistoryInfo(kept=len(kept), dropped=len(earlier) - len(kept),
                                        tokens=0, max_tokens=0)


@hookimpl
def register_prompt_builders() -> list[type[PromptBuilder]]:
    return [RecentHistory]
