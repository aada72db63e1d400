"""Helpers for the hot-reload tests: a probe plugin, profiles using it, file edits, waiting.

The probe plugin registers one stage per pipeline slot. ``probe_tag`` marks the reply
with its profile's label (so a test sees which pipeline served a turn) and, when
closed, appends the label to a log file (so a test sees when a pipeline's stages
were released).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient

PROBE_PLUGIN = '''
from pathlib import Path

from companion_engine import hookimpl
from companion_engine.stages import Audio, Sanitizer, SentenceSplitter, StageOptions, TTSBackend


class Tag(Sanitizer):
    """Prefixes the reply with ``[label]``; logs ``label`` to ``close_log`` when closed."""

    name = "probe_tag"

    class Options(StageOptions):
        label: str = "?"
        close_log: str | None = None

    async def process(self, chunks, turn):
        first = True
        async for chunk in chunks:
            yield (f"[{self.options.label}]" if first else "") + chunk
            first = False

    async def aclose(self):
        if self.options.close_log:
            with Path(self.options.close_log).open("a") as f:
                f.write(self.options.label + "\\n")


class Whole(SentenceSplitter):
    name = "probe_split"

    async def split(self, chunks, turn):
        text = "".join([c async for c in chunks])
        if text:
            yield text


class Silent(TTSBackend):
    name = "probe_tts"

    async def synthesize(self, text, turn):
        return Audio(b"", sample_rate=16000)


@hookimpl
def register_sanitizers():
    return [Tag]


@hookimpl
def register_sentence_splitters():
    return [Whole]


@hookimpl
def register_tts_backends():
    return [Silent]
'''


def probe_profile(label: str, close_log: Path | None = None, **extra: Any) -> dict[str, Any]:
    """A profile built only from probe stages, tagged ``label``."""
    tag: dict[str, Any] = {"label": label}
    if close_log is not None:
        tag["close_log"] = str(close_log)
    return {
        "llm": {"model": "openai/test-model", "api_base": "http://127.0.0.1:9/v1",
                "timeout_s": 5},
        "prompt": [],
        "output": [{"probe_tag": tag}],
        "speech": {"enabled": False, "splitter": "probe_split", "cleaners": [],
                   "tts": "probe_tts"},
        **extra,
    }


def save(path: Path, text: str) -> None:
    """Save the way editors do: write a temp file beside it, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_yaml(path: Path, data: Any) -> None:
    save(path, yaml.safe_dump(data, sort_keys=False))


async def wait_until(check: Callable[[], Awaitable[Any]], within: float = 5.0,
                     what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


async def read_text(path: Path) -> str:
    """The file's text, or "" while it does not exist."""
    return await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")


async def reload_status(client: TestClient) -> dict[str, Any]:
    body = await (await client.get("/health")).json()
    return body["config"]


async def wait_generation(client: TestClient, generation: int,
                          within: float = 5.0) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status = await reload_status(client)
        return status if status["generation"] >= generation else None

    return await wait_until(reached, within, f"config generation {generation}")


async def wait_error(client: TestClient, within: float = 5.0) -> dict[str, Any]:
    async def failed() -> dict[str, Any] | None:
        status = await reload_status(client)
        return status if status["last_error"] else None

    return await wait_until(failed, within, "a reload error in /health")
