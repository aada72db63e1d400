"""Note: a prompt builder adding a note, with a default from ``plugins:`` settings."""

from __future__ import annotations

from typing import Any, ClassVar

from companion_engine import PromptBuilder, StageOptions, Turn, hookimpl

#: The key of this plugin's settings in companion.yaml's ``plugins:``.
SETTINGS_KEY = "companion-note"


class Note(PromptBuilder):
    """A system message; its text comes from the stage's options, else from the server's
    ``plugins: {companion-note: {note: ...}}`` setting."""

    name: ClassVar[str] = "note"
    description: ClassVar[str] = "a note as a system message (example prompt builder)"

    class Options(StageOptions):
        note: str | None = None

    options: Options

    async def setup(self, engine: Any) -> None:
        settings = engine.plugin_config(SETTINGS_KEY)
        self.default = str(settings.get("note") or "Keep replies short.")

    async def build(self, turn: Turn) -> None:
        text = self.options.note or self.default
        turn.messages.append({"role": "system", "content": text.replace("{{char}}",
                                                                         turn.char_name)})


@hookimpl
def register_prompt_builders() -> list[type[PromptBuilder]]:
    return [Note]
