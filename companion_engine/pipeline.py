"""Pipeline assembly: a profile's stage lists resolved to stage instances.

``build_pipeline`` validates every stage name and option against the plugin
host's registry and reports all problems at once, each naming the profile file,
its line and the key path, with the known names listed. The pipeline remembers
which plugin registered each stage, and ``guard``/``blame`` turn whatever a
stage raises into a ``StageError`` naming both, so no caller has to guess the
culprit from a traceback.
"""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger
from pydantic import ValidationError

from companion_engine.errors import ApiError, ConfigError, Problem, StageError, TurnError
from companion_engine.stages import (
    LorebookInjector,
    PromptBuilder,
    Sanitizer,
    SentenceSplitter,
    Stage,
    STTBackend,
    TTSBackend,
    VADBackend,
)

if TYPE_CHECKING:
    from companion_engine.config import Profile, StageRef
    from companion_engine.configload import YamlDoc
    from companion_engine.engine import Engine
    from companion_engine.plugins import PluginHost


@dataclass
class Pipeline:
    """The stage instances of one profile, built once and shared by the turns using it."""

    profile: Profile
    prompt: list[PromptBuilder | LorebookInjector]
    output: list[Sanitizer]
    splitter: SentenceSplitter
    cleaners: list[Sanitizer]
    tts: TTSBackend
    stt: STTBackend
    vad: VADBackend
    generation: int = 0
    #: ``id(stage)`` -> the plugin that registered its class.
    owners: dict[int, str] = field(default_factory=dict, repr=False)
    #: Turns currently running on this pipeline.
    users: int = field(default=0, repr=False)
    retired: bool = field(default=False, repr=False)
    closed: bool = field(default=False, repr=False)

    def stages(self) -> list[Stage]:
        return [*self.prompt, *self.output, self.splitter, *self.cleaners, self.tts, self.stt,
                self.vad]

    def plugin_of(self, stage: Stage) -> str | None:
        return self.owners.get(id(stage))

    def blame(self, stage: Stage, exc: BaseException) -> TurnError:
        """``exc``, raised by ``stage``, as a ``StageError`` naming it and its plugin."""
        if isinstance(exc, TurnError):
            return exc
        return StageError.wrap(exc, stage.name, self.plugin_of(stage))

    async def guard(self, stage: Stage, items: AsyncIterator[str]) -> AsyncIterator[str]:
        """``items`` (a stage's output stream) with its failures blamed on ``stage``."""
        try:
            async for item in items:
                yield item
        except (TurnError, ApiError):
            raise  # from upstream (the provider, an earlier stage): not this stage's
        except Exception as exc:
            raise self.blame(stage, exc) from exc

    async def setup(self, engine: Engine) -> None:
        """Run every stage's ``setup`` once, in profile order; a failure closes what was
        set up and raises ``ConfigError`` naming the stage."""
        for stage in dict.fromkeys(self.stages()):
            try:
                await stage.setup(engine)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self.aclose()
                by = self.plugin_of(stage)
                file = self.profile.source or f"profiles/{self.profile.name}.yaml"
                raise ConfigError([Problem(
                    str(file), None, "",
                    f"stage {stage.name!r}{f' ({by})' if by else ''} failed to set up: "
                    f"{type(exc).__name__}: {exc}")]) from exc

    async def aclose(self) -> None:
        """Close every stage once; one stage failing to close does not stop the rest."""
        if self.closed:
            return
        self.closed = True
        for stage in self.stages():
            try:
                await stage.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("closing stage {} failed: {}", stage.name, exc)


def build_pipeline(
    profile: Profile,
    host: PluginHost,
    *,
    generation: int = 0,
    doc: YamlDoc | None = None,
) -> Pipeline:
    """Instantiate every stage of ``profile``; raise ``ConfigError`` listing all problems.

    ``doc`` is the profile's parsed YAML, used to put line numbers on problems.
    """
    problems: list[Problem] = []
    owners: dict[int, str] = {}
    file = doc.display if doc else f"profiles/{profile.name}.yaml"

    def line(path: str) -> int | None:
        return doc.line(path) if doc else None

    def make(ref: StageRef, kinds: tuple[str, ...], path: str) -> Any:
        info = None
        for kind in kinds:
            info = host.stage(kind, ref.name)
            if info:
                break
        if info is None:
            known = sorted({n for k in kinds for n in host.stages[k]})
            hint = difflib.get_close_matches(ref.name, known, n=1)
            msg = f"unknown stage {ref.name!r}"
            if hint:
                msg += f" (did you mean {hint[0]!r}?)"
            msg += f"; known: {', '.join(known) or 'none'}"
            problems.append(Problem(file, line(path), path, msg))
            return None
        try:
            options = info.cls.Options.model_validate(ref.options)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"])
                sub = f"{path}.{ref.name}.{loc}" if loc else f"{path}.{ref.name}"
                msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
                if err["type"] == "extra_forbidden":
                    fields = ", ".join(info.cls.Options.model_fields) or "none"
                    msg += f" (options of {ref.name}: {fields})"
                problems.append(Problem(file, line(sub), sub, msg))
            return None
        try:
            stage = info.cls(options)
        except Exception as exc:
            problems.append(Problem(file, line(path), path,
                                    f"stage {ref.name!r} ({info.plugin}) failed to start: {exc}"))
            return None
        owners[id(stage)] = info.plugin
        return stage

    prompt = [make(r, ("prompt_builder", "lorebook_injector"), f"prompt[{i}]")
              for i, r in enumerate(profile.prompt)]
    output = [make(r, ("sanitizer",), f"output[{i}]") for i, r in enumerate(profile.output)]
    splitter = make(profile.speech.splitter, ("sentence_splitter",), "speech.splitter")
    cleaners = [make(r, ("sanitizer",), f"speech.cleaners[{i}]")
                for i, r in enumerate(profile.speech.cleaners)]
    tts = make(profile.speech.tts, ("tts_backend",), "speech.tts")
    stt = make(profile.speech.stt, ("stt_backend",), "speech.stt")
    vad = make(profile.speech.vad, ("vad_backend",), "speech.vad")
    if problems:
        raise ConfigError(problems)
    return Pipeline(profile=profile, prompt=prompt, output=output, splitter=splitter,
                    cleaners=cleaners, tts=tts, stt=stt, vad=vad, generation=generation,
                    owners=owners)
