"""Helpers for the lorebook and prompt tests: small books, real cards, one-call scans."""

from __future__ import annotations

import json
import random
from typing import Any

from companion_engine.cards.formats import card_from_object
from companion_engine.cards.model import Character
from companion_engine.config import Profile
from companion_engine.lorebook import (
    CompiledLore,
    CompileSettings,
    ScanOptions,
    ScanResult,
    Source,
    compile_lore,
    from_object,
    scan,
)
from companion_engine.pipeline import Pipeline
from companion_engine.plugins import PluginHost
from companion_engine.tokens import estimate_tokens
from tests.conftest import shared_card


def card(filename: str) -> Character:
    """A real public card from ``../shared/research/cards``."""
    data = json.loads(shared_card(filename).read_text(encoding="utf-8"))
    return card_from_object(data, container="json").character


def entry(keys: list[str] | str, content: str = "", **fields: Any) -> dict[str, Any]:
    """A V2 ``character_book`` entry; SillyTavern settings go in ``extensions`` via ``ext``."""
    ext = fields.pop("ext", {})
    return {"keys": [keys] if isinstance(keys, str) else keys, "content": content or
            f"lore for {keys}", "enabled": True, "insertion_order": fields.pop("order", 100),
            "extensions": ext, **fields}


def compile_entries(entries: list[dict[str, Any]], *, book: dict[str, Any] | None = None,
                    globals_: list[list[dict[str, Any]]] = (),  # type: ignore[assignment]
                    **settings: Any) -> CompiledLore:
    lore = from_object({"entries": entries, **(book or {})}, "test",
                       spec=settings.get("spec", False))
    sources = [Source(lore)] + [Source(from_object({"entries": g}, f"global{i}"),
                                       character=False) for i, g in enumerate(globals_)]
    settings.setdefault("char_name", "Seraphina")
    settings.setdefault("user_name", "User")
    return compile_lore(sources, CompileSettings(**settings))


def run(entries: list[dict[str, Any]] | CompiledLore, chat: list[str], *,
        compile_opts: dict[str, Any] | None = None, seed: int = 1, **opts: Any) -> ScanResult:
    """Scan ``chat`` (scan lines, newest LAST as in a chat log) with ``entries``."""
    lore = entries if isinstance(entries, CompiledLore) else compile_entries(
        entries, **(compile_opts or {}))
    timed = opts.pop("timed", None)
    return scan(lore, list(reversed(chat)), ScanOptions(**opts), count=estimate_tokens,
                char="Seraphina", user="User", rng=random.Random(seed), timed=timed)


def fired(result: ScanResult) -> list[Any]:
    """uids of the activated entries, in activation order."""
    return [a.entry.uid for a in result.activated]


def prompt_pipeline(profile: Profile, host: PluginHost | None = None) -> Pipeline:
    """A pipeline holding only the profile's prompt stages (the rest are other issues')."""
    host = host or PluginHost.load(entry_points=False)
    stages = []
    for ref in profile.prompt:
        info = host.stage("prompt_builder", ref.name) or host.stage("lorebook_injector",
                                                                    ref.name)
        assert info is not None, ref.name
        stages.append(info.cls(info.cls.Options.model_validate(ref.options)))
    return Pipeline(profile=profile, prompt=stages, output=[], splitter=None,  # type: ignore[arg-type]
                    cleaners=[], tts=None, stt=None, vad=None)  # type: ignore[arg-type]
