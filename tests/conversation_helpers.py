"""Small cards written by the tests themselves (a fresh clone has no ../shared), and
helpers for the conversation API tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient


def write_card(root: Path, card_id: str, name: str, *, first_mes: str = "",
               alternate_greetings: tuple[str, ...] = (), talkativeness: float | str = 0.5,
               description: str = "", extensions: dict[str, Any] | None = None,
               group_only_greetings: tuple[str, ...] = ()) -> str:
    """A V3 card file in the test's characters folder; returns its id."""
    (root / "characters").mkdir(parents=True, exist_ok=True)
    data = {"name": name, "description": description or f"{name} is a test character.",
            "personality": "", "scenario": "", "first_mes": first_mes, "mes_example": "",
            "creator_notes": "", "system_prompt": "", "post_history_instructions": "",
            "alternate_greetings": list(alternate_greetings), "tags": [], "creator": "",
            "character_version": "", "group_only_greetings": list(group_only_greetings),
            "extensions": {"talkativeness": str(talkativeness), **(extensions or {})}}
    card = {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}
    (root / "characters" / f"{card_id}.json").write_text(json.dumps(card))
    return card_id


async def get_json(client: TestClient, path: str, status: int = 200) -> dict[str, Any]:
    async with client.get(path) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return body


async def send(client: TestClient, method: str, path: str, status: int = 200,
               **kwargs: Any) -> dict[str, Any]:
    async with client.request(method, path, **kwargs) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return body


async def conversation(client: TestClient, conversation_id: str) -> dict[str, Any]:
    return (await get_json(client, f"/api/conversations/{conversation_id}"))["data"]
