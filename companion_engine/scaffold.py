"""``companion plugins new``: write a ready plugin package whose tests pass as generated.

One template per stage kind; every one is written only against the public API
(``from companion_engine import ...``) and tested with ``companion_engine.testing``
against the real engine and the scripted LLM server, so a new author starts from
code that works and a test suite that shows how to test it.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path

from companion_engine import __version__

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}\Z")


class ScaffoldError(ValueError):
    """A name or folder the scaffold cannot use; the message says why."""


@dataclass(frozen=True, slots=True)
class Names:
    """The names one plugin goes by."""

    stage: str  # beep_voice: the stage name in a profile
    module: str  # companion_beep_voice: the import name
    distribution: str  # companion-beep-voice: the PyPI name
    cls: str  # BeepVoice: the stage class

    @classmethod
    def of(cls, name: str) -> Names:
        raw = name.strip().lower()
        raw = raw.removeprefix("companion-").removeprefix("companion_")
        if not _NAME.match(raw):
            raise ScaffoldError(f"invalid plugin name {name!r}: use lower-case letters, digits, "
                                "'-' and '_', starting with a letter (e.g. beep-voice)")
        stage = raw.replace("-", "_")
        if keyword.iskeyword(stage):
            raise ScaffoldError(f"invalid plugin name {name!r}: {stage!r} is a Python keyword")
        return cls(stage=stage, module=f"companion_{stage}",
                   distribution=f"companion-{stage.replace('_', '-')}",
                   cls="".join(part.capitalize() for part in stage.split("_")))


KINDS: dict[str, str] = {
    "tts": "a TTS backend (speech.tts)",
    "sanitizer": "an output sanitizer (output:)",
    "prompt": "a prompt builder (prompt:)",
    "lorebook": "a lorebook injector (prompt:)",
    "splitter": "a sentence splitter (speech.splitter)",
}

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{distribution}"
version = "0.1.0"
description = "{summary} for Companion Engine"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["companion-engine>={engine_version},<1"]

[project.optional-dependencies]
test = ["companion-engine[test]>={engine_version},<1"]

# How Companion Engine finds the plugin once the package is installed.
[project.entry-points.companion_engine]
{module} = "{module}"

[tool.setuptools]
packages = ["{module}"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
pythonpath = ["."]
testpaths = ["tests"]
addopts = "-p no:cacheprovider"
filterwarnings = [
    "error::RuntimeWarning",
    # LiteLLM's own use of deprecated pydantic APIs (the engine's gateway for some providers).
    "ignore::DeprecationWarning:litellm.*",
    "ignore:Accessing the 'model_.*fields' attribute on the instance:DeprecationWarning",
]

[tool.ruff]
line-length = 100

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "RUF"]

[tool.ruff.lint.isort]
known-first-party = ["{module}"]
'''

README = '''\
# {distribution}

{summary_cap} for [Companion Engine](https://pypi.org/project/companion-engine/): the stage
`{stage}`.

## Use it

```sh
companion plugins install {distribution}     # or: pip install {distribution}
```

then name the stage in a profile (`profiles/default.yaml`):

```yaml
{usage}
```

`companion plugins` lists it; `companion check` validates profiles that use it.

## Develop it

```sh
pip install -e '.[test]'
pytest
```

The tests run the real engine against the scripted LLM server of
`companion_engine.testing` (no model, no network). The plugin API is documented in
Companion Engine's `docs/plugins.md`; everything used here is imported from the package root.
'''

CONFTEST = '''\
"""The Companion Engine test kit: llm_server, companion_config, companion_client."""

pytest_plugins = ["companion_engine.testing"]
'''

# --- one template per kind: (module source, test source, profile usage) ----------------------

TTS_MODULE = '''\
"""{cls}: a TTS backend that answers each sentence with a tone (a starting point)."""

from __future__ import annotations

import math
import struct
from typing import Any, ClassVar

from companion_engine import Audio, StageOptions, TTSBackend, Turn, UnknownVoiceError, hookimpl
from pydantic import Field

#: Voice name -> tone frequency in Hz.
VOICES = {{"low": 220.0, "high": 440.0}}


def tone_wav(freq: float, duration_ms: int, sample_rate: int) -> bytes:
    """A mono 16-bit WAV file of a sine tone."""
    n = sample_rate * duration_ms // 1000
    pcm = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / sample_rate)))
                   for i in range(n))
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16,
                         1, 1, sample_rate, sample_rate * 2, 2, 16, b"data", len(pcm))
    return header + pcm


class {cls}(TTSBackend):
    """One tone per sentence, 30 ms per character, in the voice the client asked for."""

    name: ClassVar[str] = "{stage}"
    description: ClassVar[str] = "a tone per sentence (example TTS backend)"

    class Options(StageOptions):
        voice: str = "low"
        sample_rate: int = Field(default=16000, ge=8000, le=48000)
        ms_per_char: int = Field(default=30, ge=1, le=500)

    options: Options

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        voice = turn.voice or self.options.voice
        if voice not in VOICES:
            raise UnknownVoiceError(f"{stage} has no voice {{voice!r}} (it has: low, high)")
        duration_ms = len(text) * self.options.ms_per_char
        rate = self.options.sample_rate
        return Audio(data=tone_wav(VOICES[voice], duration_ms, rate), format="wav",
                     sample_rate=rate, duration_ms=duration_ms)

    async def voices(self) -> list[dict[str, Any]]:
        return [{{"name": name, "id": name, "language": "und"}} for name in VOICES]


@hookimpl
def register_tts_backends() -> list[type[TTSBackend]]:
    return [{cls}]
'''

TTS_TEST = '''\
"""{cls} in the real engine: chat audio in the requested voice, /api/tts, voices."""

import base64
import json
import wave
from io import BytesIO

from companion_engine.testing import Script

import {module}

PLUGINS = [{module}]


def sse(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.split("\\n\\n"):
        lines = block.split("\\n")
        if len(lines) == 2 and lines[0].startswith("event: "):
            events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


def profile(llm_server) -> dict:
    return {{"llm": {{"model": "openai/test", "api_base": llm_server.openai_base}},
            "speech": {{"enabled": True, "splitter": "sentence", "cleaners": [],
                        "tts": "{stage}"}}}}


async def test_each_sentence_is_spoken_in_the_requested_voice(companion_client, llm_server):
    llm_server.push(Script(tokens=["Hello there, friend.", " How are you today?"]))
    client = await companion_client(profile=profile(llm_server), plugins=PLUGINS)
    resp = await client.post("/api/chat/stream", json={{"message": "hi", "voice": "high"}})
    events = sse(await resp.text())
    audio = [data for name, data in events if name == "audio_ready"]
    assert [a["index"] for a in audio] == [0, 1]
    with wave.open(BytesIO(base64.b64decode(audio[0]["audio"]))) as w:
        assert w.getframerate() == 16000
        assert abs(w.getnframes() / 16000 * 1000 - audio[0]["duration_ms"]) < 1


async def test_an_unknown_voice_is_an_audio_error_and_a_422(companion_client, llm_server):
    llm_server.push(Script(tokens=["Hello there, friend."]))
    client = await companion_client(profile=profile(llm_server), plugins=PLUGINS)
    resp = await client.post("/api/chat/stream", json={{"message": "hi", "voice": "alto"}})
    events = sse(await resp.text())
    assert [n for n, _ in events][-1] == "done"
    assert any(n == "audio_error" and "no voice 'alto'" in d["error"] for n, d in events)
    resp = await client.post("/api/tts", json={{"text": "Hi.", "voice": "alto"}})
    assert resp.status == 422


async def test_voices_and_direct_speech(companion_client, llm_server):
    client = await companion_client(profile=profile(llm_server), plugins=PLUGINS)
    voices = await (await client.get("/api/tts/voices")).json()
    assert {{v["name"] for v in voices["voices"]}} == {{"low", "high"}}
    resp = await client.post("/api/tts", json={{"text": "Testing one two."}})
    assert resp.status == 200 and resp.content_type == "audio/wav"
'''

TTS_USAGE = "speech:\n  tts: {{{stage}: {{voice: high}}}}"

SANITIZER_MODULE = '''\
"""{cls}: an output sanitizer that masks words, however the reply is chunked."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import ClassVar

from companion_engine import Sanitizer, StageOptions, Turn, hookimpl
from pydantic import Field

_WORD_TAIL = re.compile(r"\\w+\\Z")


class {cls}(Sanitizer):
    """Replaces each listed word with ``replacement``.

    The reply arrives in pieces cut anywhere, so a word may be split across two of
    them ("da" + "rn"): the trailing run of word characters is held back until the
    next piece shows where the word ends.
    """

    name: ClassVar[str] = "{stage}"
    description: ClassVar[str] = "mask listed words (example sanitizer)"

    class Options(StageOptions):
        words: list[str] = Field(default_factory=lambda: ["darn"])
        replacement: str = "***"

    options: Options

    async def process(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        words = "|".join(re.escape(w) for w in self.options.words if w)
        pattern = re.compile(rf"\\b(?:{{words}})\\b", re.IGNORECASE) if words else None

        def mask(text: str) -> str:
            return pattern.sub(self.options.replacement, text) if pattern else text

        held = ""
        async for chunk in chunks:
            text = held + chunk
            tail = _WORD_TAIL.search(text)
            cut = tail.start() if tail else len(text)
            held = text[cut:]
            if cut:
                yield mask(text[:cut])
        if held:
            yield mask(held)


@hookimpl
def register_sanitizers() -> list[type[Sanitizer]]:
    return [{cls}]
'''

SANITIZER_TEST = '''\
"""{cls} in the real engine: words masked even when split across streamed pieces."""

from companion_engine.testing import Script

import {module}

PLUGINS = [{module}]


def profile(llm_server, **options) -> dict:
    return {{"llm": {{"model": "openai/test", "api_base": llm_server.openai_base}},
            "output": [{{"{stage}": options}}], "speech": {{"enabled": False}}}}


async def test_a_word_split_across_pieces_is_masked(companion_client, llm_server):
    llm_server.push(Script(tokens=["Oh da", "rn", " it, DARN", "!"]))
    client = await companion_client(profile=profile(llm_server), plugins=PLUGINS)
    reply = await (await client.post("/api/chat", json={{"message": "hi"}})).json()
    assert reply["content"] == "Oh *** it, ***!"


async def test_words_inside_other_words_are_kept(companion_client, llm_server):
    llm_server.push(Script(tokens=["dar", "ning socks, ", "darn"]))
    client = await companion_client(profile=profile(llm_server, replacement="#"),
                                    plugins=PLUGINS)
    reply = await (await client.post("/api/chat", json={{"message": "hi"}})).json()
    assert reply["content"] == "darning socks, #"
'''

SANITIZER_USAGE = "output: [strip_think, sanitize_html, {{{stage}: {{words: [darn, heck]}}}}]"

PROMPT_MODULE = '''\
"""{cls}: a prompt builder adding a note, with a default from ``plugins:`` settings."""

from __future__ import annotations

from typing import Any, ClassVar

from companion_engine import PromptBuilder, StageOptions, Turn, hookimpl

#: The key of this plugin's settings in companion.yaml's ``plugins:``.
SETTINGS_KEY = "{distribution}"


class {cls}(PromptBuilder):
    """A system message; its text comes from the stage's options, else from the server's
    ``plugins: {{{distribution}: {{note: ...}}}}`` setting."""

    name: ClassVar[str] = "{stage}"
    description: ClassVar[str] = "a note as a system message (example prompt builder)"

    class Options(StageOptions):
        note: str | None = None

    options: Options

    async def setup(self, engine: Any) -> None:
        settings = engine.plugin_config(SETTINGS_KEY)
        self.default = str(settings.get("note") or "Keep replies short.")

    async def build(self, turn: Turn) -> None:
        text = self.options.note or self.default
        turn.messages.append({{"role": "system", "content": text.replace("{{{{char}}}}",
                                                                         turn.char_name)}})


@hookimpl
def register_prompt_builders() -> list[type[PromptBuilder]]:
    return [{cls}]
'''

PROMPT_TEST = '''\
"""{cls} in the real engine: the note reaches the prompt, from options or plugin settings."""

import {module}

PLUGINS = [{module}]


def profile(**options) -> dict:
    return {{"prompt": ["system_prompt", {{"{stage}": options}}, "history"]}}


async def preview(client) -> list[tuple[str, str]]:
    body = await (await client.post("/api/prompt/preview", json={{"message": "hi"}})).json()
    return [(m["role"], m["content"]) for m in body["messages"]]


async def test_the_note_from_plugin_settings(companion_client):
    note = {{"note": "Be kind."}}
    settings = {{"plugins": {{"{distribution}": note}}}}
    client = await companion_client(profile=profile(), plugins=PLUGINS, config=settings)
    assert ("system", "Be kind.") in await preview(client)


async def test_the_stage_option_wins(companion_client):
    client = await companion_client(profile=profile(note="Rhyme, {{{{char}}}}."),
                                    plugins=PLUGINS)
    messages = await preview(client)
    assert ("system", "Rhyme, Assistant.") in messages
    assert messages[-1] == ("user", "hi")
'''

PROMPT_USAGE = "prompt: [system_prompt, {stage}, character_definition, history]"

LOREBOOK_MODULE = '''\
"""{cls}: a lorebook injector that places facts after the character when a key appears."""

from __future__ import annotations

from typing import ClassVar

from companion_engine import LorebookInjector, StageOptions, Turn, hookimpl
from pydantic import Field


class {cls}(LorebookInjector):
    """For each ``key: fact`` whose key is in the user's message, the fact goes to the
    ``after_char`` slot (placed by ``character_definition``)."""

    name: ClassVar[str] = "{stage}"
    description: ClassVar[str] = "facts by keyword (example lorebook injector)"

    class Options(StageOptions):
        facts: dict[str, str] = Field(
            default_factory=lambda: {{"moon": "The moon is made of cheese."}})

    options: Options

    async def inject(self, turn: Turn) -> None:
        text = turn.user_message.lower()
        for key, fact in self.options.facts.items():
            if key.lower() in text:
                turn.slots.setdefault("after_char", []).append(fact)


@hookimpl
def register_lorebook_injectors() -> list[type[LorebookInjector]]:
    return [{cls}]
'''

LOREBOOK_TEST = '''\
"""{cls} in the real engine: a fact is placed after the character when its key appears."""

import {module}

PLUGINS = [{module}]


async def preview(client, message: str) -> list[str]:
    body = await (await client.post("/api/prompt/preview", json={{"message": message}})).json()
    return [m["content"] for m in body["messages"]]


async def test_a_fact_appears_when_its_key_does(companion_client):
    client = await companion_client(
        profile={{"prompt": ["{stage}", "character_definition", "history"]}},
        plugins=PLUGINS)
    assert "The moon is made of cheese." in await preview(client, "Look at the Moon!")
    assert "The moon is made of cheese." not in await preview(client, "Look at the sun!")
'''

LOREBOOK_USAGE = ("prompt: [system_prompt, {{{stage}: {{facts: {{moon: \"...\"}}}}}},\n"
                  "         character_definition, history]")

SPLITTER_MODULE = '''\
"""{cls}: a sentence splitter that speaks the reply line by line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

from companion_engine import SentenceSplitter, Turn, hookimpl


class {cls}(SentenceSplitter):
    """Each non-empty line is one sentence, handed on as soon as its newline arrives."""

    name: ClassVar[str] = "{stage}"
    description: ClassVar[str] = "one sentence per line (example splitter)"

    async def split(self, chunks: AsyncIterator[str], turn: Turn) -> AsyncIterator[str]:
        line = ""
        async for chunk in chunks:
            line += chunk
            *done, line = line.split("\\n")
            for text in done:
                if text.strip():
                    yield text.strip()
        if line.strip():
            yield line.strip()


@hookimpl
def register_sentence_splitters() -> list[type[SentenceSplitter]]:
    return [{cls}]
'''

SPLITTER_TEST = '''\
"""{cls} in the real engine: one sentence (and one audio event) per line."""

import json

from companion_engine.testing import Script, stubs

import {module}

PLUGINS = [{module}]


async def test_lines_become_sentences(companion_client, llm_server):
    llm_server.push(Script(tokens=["First li", "ne\\nSecond", " line\\n\\nThird"]))
    client = await companion_client(plugins=[*PLUGINS, stubs], profile={{
        "llm": {{"model": "openai/test", "api_base": llm_server.openai_base}},
        "speech": {{"enabled": True, "splitter": "{stage}", "cleaners": [], "tts": "silent"}}}})
    body = await (await client.post("/api/chat/stream", json={{"message": "hi"}})).text()
    sentences = [json.loads(block.split("data: ", 1)[1])["sentence"]
                 for block in body.split("\\n\\n") if block.startswith("event: audio_ready")]
    assert sentences == ["First line", "Second line", "Third"]
'''

SPLITTER_USAGE = "speech:\n  splitter: {stage}"

TEMPLATES: dict[str, tuple[str, str, str]] = {
    "tts": (TTS_MODULE, TTS_TEST, TTS_USAGE),
    "sanitizer": (SANITIZER_MODULE, SANITIZER_TEST, SANITIZER_USAGE),
    "prompt": (PROMPT_MODULE, PROMPT_TEST, PROMPT_USAGE),
    "lorebook": (LOREBOOK_MODULE, LOREBOOK_TEST, LOREBOOK_USAGE),
    "splitter": (SPLITTER_MODULE, SPLITTER_TEST, SPLITTER_USAGE),
}


def render(name: str, kind: str) -> dict[str, str]:
    """The files of a new plugin package, as ``{relative path: text}``."""
    if kind not in TEMPLATES:
        raise ScaffoldError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    n = Names.of(name)
    module_src, test_src, usage = TEMPLATES[kind]
    summary = KINDS[kind].split(" (")[0]
    fields = {"stage": n.stage, "module": n.module, "distribution": n.distribution,
              "cls": n.cls, "summary": summary, "summary_cap": summary[0].upper() + summary[1:],
              "engine_version": ".".join(__version__.split(".")[:2])}
    fields["usage"] = usage.format(**fields)
    return {
        "pyproject.toml": PYPROJECT.format(**fields),
        "README.md": README.format(**fields),
        f"{n.module}/__init__.py": module_src.format(**fields),
        "tests/conftest.py": CONFTEST,
        f"tests/test_{n.stage}.py": test_src.format(**fields),
    }


def write_package(name: str, kind: str, parent: Path) -> Path:
    """Write the package under ``parent/<distribution>``; refuse to overwrite a folder."""
    files = render(name, kind)
    root = parent / Names.of(name).distribution
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another name or --dir")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
