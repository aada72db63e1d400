"""SillyTavern's macros, checked against vectors computed by SillyTavern's own code.

``tests/vectors/st_macros.json`` was produced by running SillyTavern 1.12.6's
``macros.js`` (with its ``getStringHash``, ``seedrandom``, ``droll`` and
``moment``) under node; see its ``source`` field.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.cards.clock import format_moment, humanize
from companion_engine.cards.macros import (
    MacroContext,
    chat_hash,
    evaluate,
    macro_context,
    previous_user_time,
)
from companion_engine.cards.seeded import SeedRandom, string_hash
from companion_engine.config import Profile
from companion_engine.turn import Turn

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "st_macros.json").read_text(encoding="utf-8"))
NOW = dt.datetime.fromtimestamp(VECTORS["now_ms"] / 1000, dt.UTC)


def ctx(**kw: Any) -> MacroContext:
    base: dict[str, Any] = {"char": "Seraphina", "user": "Anna", "now": NOW}
    return MacroContext(**{**base, **kw})


@pytest.mark.parametrize("case", VECTORS["hash"], ids=lambda c: repr(c["text"][:20]))
def test_string_hash_matches_sillytavern(case: dict[str, Any]) -> None:
    assert string_hash(case["text"]) == case["hash"]


def test_seedrandom_is_arc4_like_the_library() -> None:
    # Values printed by seedrandom.min.js for these seeds (number seeds gain a "\0").
    assert SeedRandom(12345).random() == 0.9166586073672581
    r = SeedRandom("abc")
    assert [r.random() for _ in range(3)] == [0.7319428070286753, 0.6472995620587413,
                                              0.7150830336207971]
    assert SeedRandom("").random() == 0.23144008215179881


@pytest.mark.parametrize("case", VECTORS["pick"],
                         ids=lambda c: f"{c['chat_id'][:6]}:{c['text'][:30]}")
def test_pick_chooses_what_sillytavern_chooses(case: dict[str, Any]) -> None:
    chat_id = case.get("main_chat", case["chat_id"])
    out = evaluate(case["text"], ctx(chat_id_hash=chat_hash(chat_id), rng=random.Random(1)))
    if "{{random" in case["text"]:  # the random part may differ; the pick must not
        assert out.split(" then ")[1] == case["expected"].split(" then ")[1]
    else:
        assert out == case["expected"]


@pytest.mark.parametrize("case", VECTORS["random"], ids=lambda c: c["text"])
def test_random_offers_the_same_choices(case: dict[str, Any]) -> None:
    rng = random.Random(7)
    seen = {evaluate(case["text"], ctx(rng=rng)) for _ in range(400)}
    assert sorted(seen) == case["outcomes"]


@pytest.mark.parametrize("case", VECTORS["roll"], ids=lambda c: c["text"])
def test_roll_accepts_the_same_formulas_and_range(case: dict[str, Any]) -> None:
    rng = random.Random(3)
    seen = {evaluate(case["text"], ctx(rng=rng)) for _ in range(3000)}
    if not case["valid"]:
        assert seen == {""}
        return
    values = sorted(int(v) for v in seen)
    assert values[0] >= case["min"] and values[-1] <= case["max"]
    if case["outcomes"] is not None:
        assert sorted(seen) == case["outcomes"]


def test_random_and_roll_are_deterministic_under_a_seed() -> None:
    text = "{{random::a::b::c::d}} {{roll:3d20}} {{random:x,y,z}}"
    first = evaluate(text, ctx(rng=random.Random("seed")))
    assert all(evaluate(text, ctx(rng=random.Random("seed"))) == first for _ in range(5))
    assert len({evaluate(text, ctx(rng=random.Random(i))) for i in range(50)}) > 1


@pytest.mark.parametrize("case", [f for f in VECTORS["format"] if "format" in f],
                         ids=lambda c: f"{c['epoch_ms']}:{c['format']}")
def test_moment_formats(case: dict[str, Any]) -> None:
    moment = dt.datetime.fromtimestamp(case["epoch_ms"] / 1000, dt.UTC)
    assert format_moment(moment, case["format"]) == case["expected"]


@pytest.mark.parametrize("case", [f for f in VECTORS["format"] if "macro" in f],
                         ids=lambda c: c["macro"])
def test_time_utc_offsets(case: dict[str, Any]) -> None:
    assert evaluate(case["macro"], ctx()) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["humanize"], ids=lambda c: str(c["seconds"]))
def test_humanize(case: dict[str, Any]) -> None:
    assert humanize(case["seconds"]) == case["expected"]


def _chat(messages: list[dict[str, Any]]) -> list[tuple[str, float | None]]:
    return [(m["role"], NOW.timestamp() - m["seconds_ago"]) for m in messages]


@pytest.mark.parametrize("case", VECTORS["idle"], ids=lambda c: c["note"])
def test_idle_duration(case: dict[str, Any]) -> None:
    since = previous_user_time(_chat(case["messages"]))
    assert evaluate("{{idle_duration}}", ctx(idle_since=since)) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["evaluate"], ids=lambda c: c["text"][:30])
def test_evaluate_matches_sillytavern(case: dict[str, Any]) -> None:
    messages = case["messages"]
    last_char = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
    last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    c = ctx(last_message=messages[-1]["content"], last_user_message=last_user,
            last_char_message=last_char, last_message_id=len(messages) - 1,
            idle_since=previous_user_time(_chat(messages)))
    assert evaluate(case["text"], c) == case["expected"]


def test_card_fields_and_names_expand_inside_them() -> None:
    c = ctx(fields={"description": "{{char}} is kind to {{user}}.", "scenario": "A forest"})
    assert evaluate("{{description}} Scenario: {{scenario}}. {{model}}", c) == \
        "Seraphina is kind to Anna. Scenario: A forest. "


def test_huge_dice_counts_are_not_rolled() -> None:
    assert evaluate("{{roll:999999999d6}}", ctx()) == ""


MACROS = ["{{random::a::b}}", "{{pick::x::y}}", "{{roll:d4}}", "{{time}}", "{{date}}",
          "{{idle_duration}}", "{{lastMessage}}", "{{char}}", "{{trim}}", "{{// c}}",
          "{{reverse:ab}}", "{{datetimeformat Do}}", "{{time_UTC+3}}", '{{banned "x"}}',
          "<USER>", "{{newline}}", "{{weekday}}", "{{isodate}}"]
TEXT = ["a", " ", "猫", "😀", "\n", ",", "::"]
FRAGMENTS = ["{{", "}}", "{{pick:", "{{random:", "{{roll ", "\\,", "<", ">"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(MACROS + TEXT), max_size=25), st.integers(0, 2**32))
def test_evaluate_expands_every_known_macro_reproducibly(pieces: list[str], seed: int) -> None:
    text = "".join(pieces)
    a = evaluate(text, ctx(rng=random.Random(seed), chat_id_hash=seed))
    assert a == evaluate(text, ctx(rng=random.Random(seed), chat_id_hash=seed))
    assert "{{" not in a and "<USER>" not in a


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(MACROS + TEXT + FRAGMENTS), max_size=25))
def test_evaluate_never_raises_on_broken_macros(pieces: list[str]) -> None:
    assert isinstance(evaluate("".join(pieces), ctx()), str)


def test_macro_context_of_a_turn() -> None:
    profile = Profile.model_validate({"llm": {"params": {"seed": 5}}})
    turn = Turn(profile=profile, user_message="Where are we?", conversation_id="c1",
                history=[{"role": "assistant", "content": "Welcome."},
                         {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello!"}],
                last_user_at=NOW.timestamp() - 120)
    c = macro_context(turn)
    assert (c.last_message, c.last_user_message, c.last_char_message) == \
        ("Where are we?", "Where are we?", "Hello!")
    assert c.last_message_id == 3 and c.chat_id_hash == chat_hash("c1")
    assert c.idle_since == NOW.timestamp() - 120
    # The seeded rng is created once per turn and is the same for the same turn.
    assert macro_context(turn).rng is c.rng
    again = Turn(profile=profile, user_message="x", conversation_id="c1",
                 history=list(turn.history))
    assert macro_context(again).rng.random() == random.Random(
        "5\x00c1\x003").random()


async def test_pick_is_stable_per_conversation_and_kept_by_a_branch(
    make_client: Any, llm_server: Any, tmp_path: Path,
) -> None:
    from companion_engine.keys import ENGINE
    from tests.chat_helpers import llm_profile

    text = "Mood: {{pick::" + "::".join(f"m{i}" for i in range(40)) + "}}"
    client = await make_client(profile={**llm_profile(llm_server), "prompt": [
        {"system_prompt": {"text": text}}, "history"]}, root=tmp_path)

    async def mood(conversation_id: str) -> str:
        async with client.post("/api/prompt/preview", json={
                "message": "hi", "conversation_id": conversation_id}) as resp:
            return str((await resp.json())["messages"][0]["content"])

    async with client.post("/api/chat", json={"message": "hi", "conversation_id": "c"}) as r:
        assert r.status == 200
    first = await mood("c")
    assert first == await mood("c") == evaluate(text, ctx(chat_id_hash=chat_hash("c")))
    await client.app[ENGINE].store.branch("c", 1, new_id="b")
    assert await mood("b") == first  # SillyTavern: a branch keeps its main chat's picks
    assert {await mood(f"other{i}") for i in range(5)} != {first}
