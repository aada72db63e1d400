"""World Info timed effects (sticky, cooldown, delay), replayed against SillyTavern's own
``WorldInfoTimedEffects`` (``tests/vectors/st_timed_effects.json``) and end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from companion_engine.keys import ENGINE
from companion_engine.lorebook.entry import Entry
from companion_engine.lorebook.timed import TimedEffects
from companion_engine.testing import LLMTestServer
from tests.cards_helpers import v2
from tests.chat_helpers import llm_profile
from tests.conftest import MakeClient
from tests.lorebook_helpers import compile_entries, entry, run

SCENARIOS = json.loads((Path(__file__).parent / "vectors" / "st_timed_effects.json")
                       .read_text(encoding="utf-8"))["scenarios"]


def _entries(specs: list[dict[str, Any]]) -> list[Entry]:
    return [Entry(uid=s["uid"], index=i, source="book", keys=("k",),
                  sticky=s.get("sticky") or 0, cooldown=s.get("cooldown") or 0,
                  delay=s.get("delay") or 0, constant=bool(s.get("constant")),
                  hash=str(s.get("hash", 1000 + s["uid"]))) for i, s in enumerate(specs)]


def _normal(state: dict[str, Any]) -> dict[str, Any]:
    return {kind: {k: {**v, "hash": str(v["hash"])} for k, v in effects.items()}
            for kind, effects in state.items()}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s["name"])
def test_timed_effects_as_sillytavern(scenario: dict[str, Any]) -> None:
    state: Any = None
    for step in scenario["steps"]:
        entries = _entries(step["entries"] if step.get("entries") is not None
                           else scenario["entries"])
        timed = TimedEffects(step["chat_length"], entries, state).check()
        activated = [e for e in entries
                     if not timed.active("delay", e)
                     and not (timed.active("cooldown", e) and not timed.active("sticky", e))
                     and (e.constant or timed.active("sticky", e) or e.uid in step["matched"])]
        timed.record(activated)
        assert [e.uid for e in activated] == step["activated"], step
        assert _normal(timed.state) == _normal(step["state"]), step
        state = json.loads(json.dumps(timed.state))  # as stored


def test_state_from_the_store_is_never_trusted() -> None:
    entries = _entries([{"uid": 1, "sticky": 2}])
    for bad in (None, "x", [], {"sticky": "no"}, {"sticky": {"book.1": 5}},
                {"sticky": {"book.1": {"hash": "1001", "start": "a", "end": None}}},
                {"cooldown": {"x": {"hash": 1, "start": 1, "end": True}}}):
        timed = TimedEffects(4, entries, bad).check()
        assert not timed.active("sticky", entries[0])


def test_scan_applies_sticky_cooldown_and_delay() -> None:
    lore = compile_entries([
        entry("dragon", "dragons sleep", id="s", ext={"sticky": 3}),
        entry("dragon", "dragon lore", id="c", ext={"cooldown": 4}),
        entry("dragon", "late lore", id="d", ext={"delay": 5}),
    ])
    state: Any = None
    fired_by_turn = []
    for length, line in ((2, "User: a dragon!"), (4, "User: nothing"), (6, "User: dragon"),
                         (8, "User: dragon")):
        timed = TimedEffects(length, lore.entries, state).check()
        result = run(lore, [line], timed=timed)
        timed.record(a.entry for a in result.activated)
        state = timed.state
        fired_by_turn.append(sorted((a.entry.uid, a.matched) for a in result.activated))
    assert fired_by_turn == [
        [("c", "dragon"), ("s", "dragon")],
        [("s", "sticky")],                      # sticky without a match; c cools down
        [("c", "dragon"), ("d", "dragon"), ("s", "dragon")],
        [("d", "dragon"), ("s", "sticky")],
    ]


def write_card(root: Path, book: dict[str, Any]) -> None:
    (root / "characters").mkdir(parents=True, exist_ok=True)
    (root / "characters" / "nova.json").write_text(
        json.dumps(v2("Nova", first_mes="", character_book=book)), encoding="utf-8")


async def post(client: TestClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with client.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def test_sticky_lore_stays_across_turns_and_branches_inherit_it(
    make_client: MakeClient, llm_server: LLMTestServer, tmp_path: Path,
) -> None:
    write_card(tmp_path, {"entries": [
        entry("dragon", "Dragons guard the pass.", id=1, ext={"sticky": 4}),
        entry("dragon", "The dragon owes a debt.", id=2, ext={"cooldown": 10})]})
    client = await make_client(profile={**llm_profile(llm_server), "character": "nova"},
                               root=tmp_path)

    def lore(data: dict[str, Any]) -> list[tuple[Any, str]]:
        return sorted((x["id"], x["matched"]) for x in data["lore"])

    await post(client, "/api/chat", {"message": "Tell me of the dragon.",
                                     "conversation_id": "c"})
    state = await client.app[ENGINE].store.get_state("c")
    assert state["lorebook_timed"]["sticky"]["Nova.1"]["end"] == 1 + 4
    # Two messages later, nothing mentions a dragon: the sticky entry is still in.
    data = await post(client, "/api/prompt/preview", {"message": "And the weather?",
                                                      "conversation_id": "c"})
    assert lore(data) == [(1, "sticky")]
    # The preview stored nothing: the same preview again is the same.
    assert await client.app[ENGINE].store.get_state("c") == state
    await post(client, "/api/chat", {"message": "And the weather?", "conversation_id": "c"})
    data = await post(client, "/api/prompt/preview", {"message": "The dragon again!",
                                                      "conversation_id": "c"})
    assert lore(data) == [(1, "dragon")]  # sticky ran out; entry 2 still cooling down

    branch = await client.app[ENGINE].store.branch("c", 3, new_id="b")
    assert (await client.app[ENGINE].store.get_state(branch.id))["lorebook_timed"] == \
        (await client.app[ENGINE].store.get_state("c"))["lorebook_timed"]
    data = await post(client, "/api/prompt/preview", {"message": "The dragon again!",
                                                      "conversation_id": "b"})
    assert (2, "dragon") not in lore(data)  # the branch is still on cooldown too
