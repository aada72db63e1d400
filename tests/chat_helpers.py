"""Shared pieces of the chat tests: a strict SSE parser and an app wired to the test LLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from companion_engine.testing import LLMTestServer
from tests.conftest import shared_card

Event = tuple[str, dict[str, Any]]


def parse_sse(body: str) -> list[Event]:
    """Events of an SSE body, asserting the wire format: ``event:`` + one ``data:`` line."""
    assert body.endswith("\n\n") or not body, "a stream ends with a blank line"
    events: list[Event] = []
    for block in body.split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            continue  # a comment (keep-alive)
        assert len(lines) == 2, f"an event is exactly two lines: {block!r}"
        assert lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


def names(events: list[Event]) -> list[str]:
    return [n for n, _ in events]


def streamed_text(events: list[Event]) -> str:
    return "".join(d["content"] for n, d in events if n == "content")


def llm_profile(server: LLMTestServer, *, ollama: bool = False, **llm: Any) -> dict[str, Any]:
    """A profile whose LLM is the scripted test server."""
    if ollama:
        base = {"model": "ollama_chat/test-model", "api_base": server.ollama_base}
    else:
        base = {"model": "openai/test-model", "api_base": server.openai_base}
    return {"llm": {**base, "timeout_s": 5, **llm}}


def add_card(root: Path, name: str = "seraphina.v2.chara.json") -> str:
    """Copy a real public card into a test's (temporary) characters folder; return its id."""
    card_id = name.split(".")[0]
    (root / "characters").mkdir(parents=True, exist_ok=True)
    shutil.copy(shared_card(name), root / "characters" / f"{card_id}.json")
    return card_id


async def chat_events(client: TestClient, body: dict[str, Any]) -> list[Event]:
    """POST /api/chat/stream and parse the whole stream."""
    async with client.post("/api/chat/stream", json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return parse_sse(await resp.text())
