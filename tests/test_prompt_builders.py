"""Prompt assembly: each builder, the default order, history budget, greetings, tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from companion_engine.cards.model import Character, CharacterBook, LoreEntry
from companion_engine.config import Profile
from companion_engine.errors import ApiError
from companion_engine.prompting import assemble_prompt
from companion_engine.tokens import ESTIMATE, counter_for, estimate_tokens
from companion_engine.turn import Message, Turn
from tests.lorebook_helpers import card, prompt_pipeline


def aria(**fields: Any) -> Character:
    base: dict[str, Any] = dict(
        name="Aria", description="{{char}} lives in {{user}}'s computer.",
        personality="curious", scenario="Evening chat.", first_mes="Hi {{user}}!",
        alternate_greetings=["Welcome back, {{user}}.", "Yo."],
        mes_example="<START>\n{{user}}: Bored?\n{{char}}: Never.\n<start>\n{{user}}: Fact?\n"
                    "{{char}}: Venus spins slowly.",
        system_prompt="{{original}} Stay as {{char}}.",
        post_history_instructions="Short replies, {{user}}.",
        character_book=CharacterBook(entries=[
            LoreEntry(keys=["saturn"], content="{{char}} loves Saturn.", position="before_char",
                      insertion_order=5, id=1),
            LoreEntry(keys=["tea"], content="Tea at four.", position="after_char", id=2),
            LoreEntry(keys=["rings"], content="Rings note.", id=3,
                      extensions={"position": 4, "depth": 1, "role": 0}),
        ]))
    base.update(fields)
    return Character(**base)


async def assemble(profile: Profile | None = None, **turn: Any) -> Turn:
    profile = profile or Profile()
    t = Turn(profile=profile, **{"user_message": "hello", "user_name": "Kai", **turn})
    await assemble_prompt(prompt_pipeline(profile), t)
    return t


def contents(t: Turn) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in t.messages]


async def test_default_order_follows_sillytavern_chat_completion() -> None:
    t = await assemble(character=aria(), user_message="Saturn and tea and rings?")
    assert contents(t) == [
        ("system", "Write Aria's next reply in a fictional chat between Aria and Kai. "
                   "Stay as Aria."),
        ("system", "Aria loves Saturn."),                          # lore before
        ("system", "Aria lives in Kai's computer."),               # description
        ("system", "[Aria's personality: curious]"),
        ("system", "[Circumstances and context of the dialogue: Evening chat.]"),
        ("system", "Tea at four."),                                # lore after
        ("system", "[Example Chat]\nKai: Bored?\nAria: Never."),
        ("system", "[Example Chat]\nKai: Fact?\nAria: Venus spins slowly."),
        ("assistant", "Hi Kai!"),                                  # the greeting
        ("system", "Rings note."),                                 # depth 1: before the last
        ("user", "Saturn and tea and rings?"),
        ("system", "Short replies, Kai."),
    ]
    assert t.greeting == "Hi Kai!"
    assert [x.id for x in t.lore] == [1, 2, 3]


async def test_no_character_still_prompts() -> None:
    t = await assemble()
    assert contents(t) == [
        ("system", "Write Assistant's next reply in a fictional chat between Assistant and Kai."),
        ("user", "hello")]


async def test_system_prompt_options() -> None:
    profile = Profile(prompt=[{"system_prompt": {"text": "Be brief.",
                                                 "prefer_character": False}}])
    t = await assemble(profile, character=aria())
    assert contents(t)[0] == ("system", "Be brief.")
    profile = Profile(prompt=[{"system_prompt": {"text": "Be brief."}}])
    t = await assemble(profile, character=aria(system_prompt=""))
    assert contents(t)[0] == ("system", "Be brief.")  # empty card field: the original stays


async def test_post_history_instructions_with_original() -> None:
    profile = Profile(prompt=[{"post_history_instructions": {"text": "Stay safe."}}])
    t = await assemble(profile, character=aria(
        post_history_instructions="{{original}} Then {{original}} twice."))
    assert contents(t)[0] == ("system", "Stay safe. Then  twice.")  # one-shot, as in ST


async def test_examples_as_turns() -> None:
    profile = Profile(prompt=[{"example_dialogue": {"format": "turns"}}])
    t = await assemble(profile, character=aria())
    assert contents(t)[:6] == [
        ("system", "[Example Chat]"), ("user", "Bored?"), ("assistant", "Never."),
        ("system", "[Example Chat]"), ("user", "Fact?"), ("assistant", "Venus spins slowly.")]


async def test_real_card_line_endings_are_normalised() -> None:
    t = await assemble(character=card("megumin.v1.chara.json"))
    assert all("\r" not in m["content"] for m in t.messages)
    examples = [m for m in t.messages if m["content"].startswith("[Example Chat]")]
    assert examples and "{{char}}" not in examples[0]["content"]


# --- greetings ------------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "expected"), [(None, "Hi Kai!"), (0, "Hi Kai!"),
                                                 (1, "Welcome back, Kai."), (2, "Yo.")])
async def test_greeting_selection(index: int | None, expected: str) -> None:
    chosen = {} if index is None else {"greeting_index": index}
    t = await assemble(character=aria(), **chosen)
    assert t.greeting == expected
    assert contents(t)[-3:] == [("assistant", expected), ("user", "hello"),
                                ("system", "Short replies, Kai.")]


async def test_greeting_out_of_range_is_a_409() -> None:
    with pytest.raises(ApiError) as err:
        await assemble(character=aria(), greeting_index=3)
    assert err.value.status == 409 and "2 alternate greeting" in err.value.error


async def test_no_greeting_once_the_conversation_has_history() -> None:
    t = await assemble(character=aria(), history=[{"role": "user", "content": "earlier"},
                                                  {"role": "assistant", "content": "yes"}])
    assert t.greeting is None
    assert all(m["content"] != "Hi Kai!" for m in t.messages)


async def test_first_message_after_history_inserts_before_the_user() -> None:
    profile = Profile(prompt=["history", "first_message"])
    t = await assemble(profile, character=aria())
    assert contents(t) == [("assistant", "Hi Kai!"), ("user", "hello")]
    t = await assemble(Profile(prompt=["first_message"]), character=aria())
    assert contents(t) == [("assistant", "Hi Kai!"), ("user", "hello")]


# --- history --------------------------------------------------------------------------------


def chat(n: int, size: int = 40) -> list[Message]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:03d}" + "x" * size}
            for i in range(n)]


async def test_history_keeps_the_newest_within_budget() -> None:
    per = estimate_tokens("000" + "x" * 40) + 4  # content + per-message overhead
    user = estimate_tokens("hello") + 4
    profile = Profile(prompt=[{"history": {"max_tokens": user + 3 * per}}])
    t = await assemble(profile, history=chat(10))
    assert [m["content"][:3] for m in t.messages] == ["007", "008", "009", "hel"]
    assert t.history_info is not None
    assert t.history_info.dropped == 7 and t.history_info.tokens == user + 3 * per


async def test_user_message_always_included() -> None:
    profile = Profile(prompt=[{"history": {"max_tokens": 1}}])
    t = await assemble(profile, history=chat(4), user_message="y" * 4000)
    assert contents(t) == [("user", "y" * 4000)]


async def test_no_history_builder_still_sends_the_user_message() -> None:
    t = await assemble(Profile(prompt=["system_prompt"]), history=chat(2))
    assert t.messages[-1] == {"role": "user", "content": "hello"}


async def test_depth_injections() -> None:
    profile = Profile(prompt=["history"])
    t = Turn(profile=profile, user_message="now", history=chat(3, 0))
    t.depth_injections = [(0, "system", "at-0"), (2, "user", "at-2"), (99, "assistant", "top")]
    await assemble_prompt(prompt_pipeline(profile), t)
    assert [m["content"] for m in t.messages] == ["top", "000", "001", "at-2", "002", "now",
                                                  "at-0"]


async def test_squash_system() -> None:
    profile = Profile(prompt=["system_prompt", "character_definition", "history",
                              "squash_system"])
    t = await assemble(profile, character=aria())
    assert [m["role"] for m in t.messages] == ["system", "user"]
    assert "Aria lives in Kai's computer." in t.messages[0]["content"]


# --- tokens ---------------------------------------------------------------------------------


def test_real_tokenizer_for_openai_models_offline() -> None:
    counter = counter_for("openai/gpt-4o")
    assert counter.exact and counter.name == "tiktoken:o200k_base"
    assert counter.count("Hello world") == 2
    assert counter_for("gpt-3.5-turbo").name == "tiktoken:cl100k_base"


def test_estimate_for_other_models() -> None:
    assert counter_for("ollama_chat/llama3.2") is ESTIMATE
    assert estimate_tokens("abcdefgh") == 2 and estimate_tokens("abcdefghi") == 3
    assert estimate_tokens("猫が好き") == 4  # non-ASCII: one token each, never fewer
    assert estimate_tokens("") == 0


# --- depth injections as SillyTavern places them (vectors from its own code) ------------------

_INJECTIONS = json.loads((Path(__file__).parent / "vectors" / "st_injections.json")
                         .read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", _INJECTIONS["cases"], ids=lambda c: c["name"])
def test_depth_injections_match_sillytavern(case: dict[str, Any]) -> None:
    from companion_engine.builtin.prompt_builders import with_injections

    # SillyTavern joins one depth and role in the order of its extension prompt keys.
    ordered = sorted(case["injections"], key=lambda i: i["key"])
    out = with_injections(case["chat"], [(i["depth"], i["role"], i["content"]) for i in ordered])
    assert out == case["expected"]
