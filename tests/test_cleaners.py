"""Speech cleaners: what is said for each display sentence, with state across sentences."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.builtin.cleaners import Actions, Emoji, Expressions, Markdown
from companion_engine.config import Profile
from companion_engine.speech.session import SpeechSession, decoded, speakable
from companion_engine.stages import Sanitizer
from companion_engine.turn import Turn
from tests.speech_helpers import Recorder, make_pipeline, make_turn


async def run(stage: Sanitizer, sentences: list[str]) -> list[str]:
    async def source() -> AsyncIterator[str]:
        for s in sentences:
            yield s

    turn = Turn(profile=Profile(), user_message="hi")
    return [" ".join(s.split()) async for s in stage.process(source(), turn)]


async def test_markdown_keeps_words_drops_code_and_urls() -> None:
    out = await run(Markdown(), [
        "# A **bold** _idea_ with `inline code`.",
        "See [the docs](https://x.org/a_b) or https://example.com/page now.",
        "Here:\n```python\nprint('a. b')",
        "x = 1. Still code.",
        "```\nBack to talking.",
        "- a list item\n> a quote\n| a | b |\n|---|---|",
        "![a cat](cat.png) ~~struck~~ and snake_case stays.",
    ])
    assert out == [
        "A bold idea with inline code.",
        "See the docs or now.",
        "Here:",
        "",
        "Back to talking.",
        "a list item a quote a, b",
        "a cat and snake_case stays.",
    ]


async def test_markdown_code_placeholder_said_once_per_block() -> None:
    out = await run(Markdown(Markdown.Options(code_placeholder="(code)")),
                    ["Look:\n```", "a = 1.", "```", "Done."])
    assert out == ["Look: (code)", "", "", "Done."]


async def test_actions_dropped_bold_kept_across_sentences() -> None:
    out = await run(Actions(), [
        "*waves* Hello there!",
        "**London:** is lovely.",
        "I *walk over to you.",
        "Then I smile.* Hi!",
        "2*3*4 is 24.",
        "* not an action",
    ])
    assert out == ["Hello there!", "**London:** is lovely.", "I", "Hi!", "2*3*4 is 24.",
                   "* not an action"]


async def test_actions_keep_text_speaks_the_words() -> None:
    out = await run(Actions(Actions.Options(keep_text=True)), ["*waves* Hello!"])
    assert out == ["waves Hello!"]


async def test_actions_then_markdown_like_the_default_profile() -> None:
    turn = Turn(profile=Profile(), user_message="hi")

    async def source() -> AsyncIterator[str]:
        yield "**Bold words** stay, *sighs* actions go."

    stream = Markdown().process(Actions().process(source(), turn), turn)
    assert [" ".join(s.split()) async for s in stream] == ["Bold words stay, actions go."]


async def test_emoji_removed() -> None:
    out = await run(Emoji(), ["I love you 💕! 👨‍👩‍👧 ok 1️⃣ 🇺🇸 ✨ done ❤️", "Plain text."])
    assert out == ["I love you ! ok done", "Plain text."]


async def test_expressions_extracted_not_spoken() -> None:
    stage = Expressions()
    assert await run(stage, ["[joy] Hello [Big Smile] there!", "[link](u) stays."]) == [
        "Hello there!", "[link](u) stays."]
    assert stage.extract_expressions("[joy] Hello [Big Smile] there!") == ["joy", "big smile"]


async def test_expressions_with_known_names() -> None:
    known = Expressions(Expressions.Options(names=["joy"]))
    assert known.extract_expressions("[joy] hi [inquisitive]") == ["joy"]
    assert await run(known, ["[joy] hi [inquisitive] there"]) == ["hi there"]
    keep = Expressions(Expressions.Options(names=["joy"], strip_unknown=False))
    assert await run(keep, ["[joy] hi [inquisitive] there"]) == ["hi [inquisitive] there"]


def test_options_forbid_unknown_keys() -> None:
    with pytest.raises(ValueError):
        Markdown.Options(placeholder="x")  # type: ignore[call-arg]


def test_speakable_decodes_entities_and_skips_punctuation() -> None:
    assert speakable(decoded("It&#x27;s  &amp;\n fine")) == "It's & fine"
    assert speakable(" ... !!! -- ") == ""
    assert speakable("你好") == "你好"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="ab *_`#[]()!.\n~|>-😊", max_size=30), max_size=8))
async def test_every_cleaner_yields_one_item_per_sentence(sentences: list[str]) -> None:
    for stage in (Markdown(), Actions(), Emoji(), Expressions()):
        assert len(await run(stage, sentences)) == len(sentences)


async def test_session_reports_expressions_and_keeps_display_text_apart() -> None:
    pipeline = make_pipeline()  # the default cleaners: expressions, actions, markdown, emoji
    turn = make_turn(pipeline)
    rec = Recorder()
    session = SpeechSession(pipeline, turn, rec)
    display = ["[joy] **Hello** there! 😊", "*waves* [sad]",
               "It&#x27;s `fine`, &lt;i&gt;see&lt;/i&gt; [x](http://a.b)."]
    for s in display:
        session.add(s)
    assert session.expressions(0) == ["joy"]
    assert session.expressions(1) == ["sad"]
    assert session.expressions(2) == []
    assert turn.expressions == {0: ["joy"], 1: ["sad"]}
    await session.finish()
    assert rec.indexes() == [0, 2]  # sentence 1 has nothing to say
    first, third = rec.events[0][1], rec.events[1][1]
    assert first["display"] == display[0] and first["sentence"] == "Hello there!"
    assert first["expression"] == "joy" and first["expressions"] == ["joy"]
    assert third["sentence"] == "It's fine, see x."
    assert "expression" not in third
