"""Card macros per the V1/V2 spec: {{char}}/<BOT>, {{user}}/<USER> and {{original}}."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from companion_engine.cards.formats import card_from_object
from companion_engine.cards.macros import substitute, with_original
from tests.cards_helpers import v2


@pytest.mark.parametrize(("text", "expected"), [
    ("{{char}} greets {{user}}.", "Nova greets Sam."),
    ("{{CHAR}} and {{User}}", "Nova and Sam"),
    ("<BOT> meets <user>; <char> too", "Nova meets Sam; Nova too"),
    ("{{ char }} is not a macro", "{{ char }} is not a macro"),
    ("{{original}} stays", "{{original}} stays"),
    ("no macros at all", "no macros at all"),
])
def test_substitute(text: str, expected: str) -> None:
    assert substitute(text, "Nova", "Sam") == expected


@pytest.mark.parametrize(("field", "expected"), [
    ("", "Be concise."),
    ("   ", "Be concise."),
    ("{{original}} Stay in character.", "Be concise. Stay in character."),
    ("Own prompt only.", "Own prompt only."),
    ("{{ORIGINAL}} then {{original}} again", "Be concise. then  again"),
])
def test_with_original(field: str, expected: str) -> None:
    assert with_original(field, "Be concise.") == expected


def test_card_system_prompt_per_the_v2_example() -> None:
    """The spec's example: user prompt + card prompt with {{original}}, then {{char}}."""
    c = card_from_object(v2("Seraphina",
                            system_prompt="{{original}} Stay in character as {{char}}.")).character
    text = substitute(with_original(c.system_prompt, "Be concise."), c.display_name, "Sam")
    assert text == "Be concise. Stay in character as Seraphina."


def test_v3_nickname_is_what_char_means() -> None:
    card = {**v2("Formal Name", nickname="Nick"), "spec": "chara_card_v3", "spec_version": "3.0"}
    card["data"]["nickname"] = "Nick"
    c = card_from_object(card).character
    assert substitute(c.first_mes, c.display_name, "Sam") == "Hello, I am Nick, Sam."


PIECES = ["{{char}}", "{{USER}}", "<bot>", "<User>", "<CHAR>", "{{original}}", "a", " ", "{",
          "}", "<", ">", "é"]


@given(st.lists(st.sampled_from(PIECES), max_size=30))
def test_substitute_leaves_no_macro_behind(pieces: list[str]) -> None:
    text = "".join(pieces)
    out = substitute(text, "C", "U")
    for macro in ("{{char}}", "{{user}}", "<bot>", "<user>", "<char>"):
        assert macro not in out.lower()
    expected_original = text.lower().count("{{original}}")
    assert out.lower().count("{{original}}") == expected_original


@given(st.text(alphabet=st.characters(blacklist_characters="{<"), max_size=100))
def test_text_without_macros_is_unchanged(text: str) -> None:
    assert substitute(text, "C", "U") == text
