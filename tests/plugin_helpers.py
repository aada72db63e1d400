"""Build throwaway plugins for tests: local plugin files and installed distributions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

#: A plugin module that registers one stage of every kind (names prefixed ``t_``).
STAGES_PLUGIN = '''
from companion_engine import hookimpl
from companion_engine.stages import (
    Audio, LorebookInjector, PromptBuilder, Sanitizer, SentenceSplitter, StageOptions, TTSBackend,
    STTBackend, Transcript, VADBackend)


class Greeter(PromptBuilder):
    name = "t_greeter"

    class Options(StageOptions):
        text: str = "hello"

    async def build(self, turn):
        turn.messages.append({"role": "system", "content": self.options.text})


class Lore(LorebookInjector):
    name = "t_lore"

    async def inject(self, turn):
        turn.slots.setdefault("before_char", []).append("lore")


class Upper(Sanitizer):
    name = "t_upper"

    async def process(self, chunks, turn):
        async for c in chunks:
            yield c.upper()


class Whole(SentenceSplitter):
    name = "t_whole"

    async def split(self, chunks, turn):
        text = "".join([c async for c in chunks])
        if text:
            yield text


class Silent(TTSBackend):
    name = "t_silent"

    async def synthesize(self, text, turn):
        return Audio(b"", sample_rate=16000)


class Ear(STTBackend):
    name = "t_ear"

    async def transcribe(self, audio, turn):
        return Transcript(text=f"{audio.duration_ms} ms", language="en")


class Loudness(VADBackend):
    name = "t_vad"

    def speech_probability(self, frame, state):
        return 1.0 if any(frame) else 0.0


@hookimpl
def register_prompt_builders():
    return [Greeter]


@hookimpl
def register_lorebook_injectors():
    return [Lore]


@hookimpl
def register_sanitizers():
    return [Upper]


@hookimpl
def register_sentence_splitters():
    return [Whole]


@hookimpl
def register_tts_backends():
    return [Silent]


@hookimpl
def register_stt_backends():
    return [Ear]


@hookimpl
def register_vad_backends():
    return [Loudness]
'''

#: The ``speech`` slots of STAGES_PLUGIN for a profile built without the built-ins.
T_LISTEN = {"stt": "t_ear", "vad": "t_vad"}


def write_plugin(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def install_distribution(
    site: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    dist: str,
    version: str,
    module: str,
    source: str,
    entry_name: str | None = None,
) -> None:
    """Create ``module.py`` plus a real ``*.dist-info`` with an entry point, on ``sys.path``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        f"[companion_engine]\n{entry_name or module} = {module}\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("COMPANION_LOAD_PLUGINS", raising=False)
