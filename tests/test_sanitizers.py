"""The built-in output sanitizers, fed the way a model streams: split anywhere."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.builtin.sanitizers import (
    HTMLSanitizer,
    RoleLeakGuard,
    SanitizeHTML,
    StopAtRoleLeak,
    StripThink,
    ThinkStripper,
    register_sanitizers,
)
from companion_engine.config import Profile
from companion_engine.stages import Sanitizer
from companion_engine.turn import Turn


async def _pieces(parts: list[str]) -> AsyncIterator[str]:
    for p in parts:
        yield p


def run(stage: Sanitizer, parts: list[str], turn: Turn | None = None) -> str:
    """The sanitizer's whole output for a reply streamed as ``parts``."""
    turn = turn or Turn(profile=Profile(), user_message="hi")

    async def collect() -> str:
        return "".join([p async for p in stage.process(_pieces(parts), turn)])

    return asyncio.run(collect())


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def every_split(text: str) -> list[list[str]]:
    """Whole, one char at a time, and every two-way split."""
    return [[text], list(text), *([text[:i], text[i:]] for i in range(1, len(text)))]


# --- strip_think ------------------------------------------------------------------------------


def test_strip_think_drops_block_split_across_chunks() -> None:
    text = "<think>The user greets me. I should be warm.</think>\n\nHello there!"
    for parts in every_split(text):
        assert run(StripThink(), parts) == "Hello there!", parts


def test_strip_think_keeps_text_around_blocks_and_other_tags() -> None:
    assert run(StripThink(), ["I <3 you <b>a", " lot</b>"]) == "I <3 you <b>a lot</b>"
    assert run(StripThink(), ["Yes. <THINK>hm</Think> No."]) == "Yes. No."
    assert run(StripThink(), ["a<thinking>x</thinking>b"]) == "ab"


def test_strip_think_unclosed_block_is_dropped_and_partial_tag_kept() -> None:
    assert run(StripThink(), ["Hi <think>never closed"]) == "Hi "
    assert run(StripThink(), ["Look: <thi"]) == "Look: <thi"


def test_strip_think_custom_tags_option() -> None:
    stage = StripThink(StripThink.Options(tags=["reasoning"]))
    assert run(stage, ["<reason", "ing>x</reasoning>ok <think>kept</think>"]) == (
        "ok <think>kept</think>")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<thi", "nk>", "<", "/", "a", " ",
                                 "It's", "\n", ">", "b<c"]), max_size=25),
       st.lists(st.integers(0, 400), max_size=8))
def test_strip_think_output_does_not_depend_on_chunking(tokens: list[str], cuts: list[int]) -> None:
    text = "".join(tokens)
    whole = ThinkStripper(["think"])
    expected = whole.feed(text) + whole.finish()
    assert run(StripThink(), split_at(text, cuts)) == expected
    if "<" not in text:
        assert expected == text.lstrip()
    if "<think>" not in text:
        assert expected == text.lstrip()


# --- sanitize_html ----------------------------------------------------------------------------


def test_sanitize_html_keeps_ordinary_text_verbatim() -> None:
    text = "It's \"fine\" & a < b > c, I <3 you. 5<6 and x < y; <b>bold</b> <em>ok</em>"
    for parts in ([text], list(text)):
        assert run(SanitizeHTML(), parts) == text


def test_sanitize_html_removes_script_style_iframe_split_anywhere() -> None:
    text = ("Hi<script type='x'>alert('<b>')</script> there<STYLE>p{}</style>!"
            "<iframe src=//evil></iframe> <embed src=x> <link rel=x>done")
    for parts in every_split(text):
        assert run(SanitizeHTML(), parts) == "Hi there!  done", parts


def test_sanitize_html_strips_event_handlers_and_script_urls_keeping_the_tag() -> None:
    out = run(SanitizeHTML(), ['<img src="a.png" onerror="alert(1)" alt=\'x\'>',
                               '<a href=" jav&#x61;script:alert(1)" title="t">l</a>',
                               '<p style="width:expression(alert(1))" class=c>p</p>'])
    assert out == '<img src="a.png" alt=\'x\'><a title="t">l</a><p class=c>p</p>'


def test_sanitize_html_unclosed_script_drops_the_rest() -> None:
    assert run(SanitizeHTML(), ["ok <script>", "while(1){}"]) == "ok "


def test_sanitize_html_tag_like_text_that_is_no_tag_cannot_become_one() -> None:
    assert run(SanitizeHTML(), ["x <y and z"]) == "x &lt;y and z"
    assert run(SanitizeHTML(), ["<scr</script>ipt>alert(1)"]) == "&lt;script>alert(1)"
    filler = "a" * 1100
    out = run(SanitizeHTML(), [f"<img src=x {filler} on</b>error=alert(1)>"])
    assert out.startswith("&lt;img") and "<img" not in out


_HTML_TOKENS = ["<script>", "</script>", "<scr", "ipt>", "<img src=x onerror=alert(1)>",
                "<b>", "</b>", "<", ">", "a", " ", "'", '"', "on", "click=", "<iframe>",
                "</iframe>", "&amp;", "\n", "<a href='javascript:x'>"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_HTML_TOKENS), max_size=25),
       st.lists(st.integers(0, 400), max_size=8))
def test_sanitize_html_is_chunking_independent_and_leaves_no_active_markup(
    tokens: list[str], cuts: list[int],
) -> None:
    text = "".join(tokens)
    whole = HTMLSanitizer()
    expected = whole.feed(text) + whole.finish()
    assert run(SanitizeHTML(), split_at(text, cuts)) == expected
    low = expected.lower()
    assert "<script" not in low and "<iframe" not in low
    for tag in re.findall(r"<[a-z][^<>]*>", low):
        assert "onerror" not in tag and "javascript:" not in tag, tag


# --- stop_at_role_leak ------------------------------------------------------------------------


def _turn(user_name: str = "Alex") -> Turn:
    return Turn(profile=Profile(), user_message="hi", user_name=user_name)


def test_role_leak_stops_at_user_label_split_across_chunks() -> None:
    text = "Sure, let's go.\nAlex: And then what?\nMore made-up turns."
    for parts in every_split(text):
        turn = _turn()
        assert run(StopAtRoleLeak(), parts, turn) == "Sure, let's go.", parts
        assert turn.finish_reason == "role_leak"


def test_role_leak_catches_generic_and_decorated_labels_and_template_tokens() -> None:
    assert run(StopAtRoleLeak(), ["Ok.\n\n**User:** hi"], _turn()) == "Ok."
    assert run(StopAtRoleLeak(), ["Ok.\n### user : hi"], _turn()) == "Ok."
    assert run(StopAtRoleLeak(), ["Fine<|im_", "end|>\n<|im_start|>user"], _turn()) == "Fine"


def test_role_leak_keeps_lines_that_only_look_similar() -> None:
    text = "Alexander: no.\nUsers: many.\nThe user: said.\nAlex said: hi\nUser"
    turn = _turn()
    assert run(StopAtRoleLeak(), list(text), turn) == text
    assert turn.finish_reason is None


def test_role_leak_extra_names_option() -> None:
    stage = StopAtRoleLeak(StopAtRoleLeak.Options(names=["Narrator"], markers=[]))
    assert run(stage, ["A.\nNarr", "ator: B"], _turn()) == "A."
    assert run(stage, ["A <|im_end|> B"], _turn()) == "A <|im_end|> B"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["\n", "Alex", ":", " ", "User", "hi", "<|im_end|>", "<|",
                                 "*", "#", "ok."]), max_size=20),
       st.lists(st.integers(0, 300), max_size=8))
def test_role_leak_is_chunking_independent(tokens: list[str], cuts: list[int]) -> None:
    text = "".join(tokens)
    names = ["User", "Alex"]
    whole = RoleLeakGuard(names, ["<|im_end|>"])
    expected = whole.feed(text) + whole.finish()
    stage = StopAtRoleLeak(StopAtRoleLeak.Options(markers=["<|im_end|>"]))
    assert run(stage, split_at(text, cuts), _turn()) == expected
    assert expected in text or expected.rstrip() in text


def test_registered_names() -> None:
    assert [c.name for c in register_sanitizers()] == [
        "strip_think", "sanitize_html", "stop_at_role_leak"]


@pytest.mark.parametrize("stage", [StripThink(), SanitizeHTML(), StopAtRoleLeak()])
def test_plain_text_passes_unchanged(stage: Sanitizer) -> None:
    text = "Hello! It's 3.14, isn't it? Dr. Smith says \"hi\" & waves."
    assert run(stage, re.split(r"(?<= )", text), _turn()) == text
    assert run(stage, list(text), _turn()) == text


# --- the chunk-boundary example in docs/plugins.md ---------------------------------------------


def _docs_example() -> type[Sanitizer]:
    """The ``plugins/bleep.py`` example of docs/plugins.md, executed as written."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    code = re.search(r"```python\n(# plugins/bleep\.py\n.*?)```", text, re.DOTALL)
    assert code is not None, "the example is gone from docs/plugins.md"
    namespace: dict[str, object] = {"__name__": "bleep_example"}
    exec(compile(code.group(1), "docs/plugins.md:bleep", "exec"), namespace)
    return namespace["Bleep"]  # type: ignore[return-value]


def test_docs_chunk_boundary_example_is_correct() -> None:
    """Issue 19.13: the documented pattern gives the same output however the reply is cut."""
    bleep = _docs_example()
    stage = bleep(bleep.Options(words=["darn", "heck"]))
    text = "Darn it! What the heck, darned darn-heck. darn"
    expected = "**** it! What the ****, darned ****-****. ****"
    for parts in every_split(text):
        assert run(stage, parts) == expected, parts
    naive = "".join(p.replace("darn", "****") for p in ["da", "rn"])
    assert naive == "darn"  # what a sanitizer that looks at each chunk alone lets through


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["darn", "da", "rn", " ", "ed", "!", "x", "DARN", "\n", "é"]),
                max_size=20), st.lists(st.integers(0, 200), max_size=8))
def test_docs_chunk_boundary_example_does_not_depend_on_chunking(
        tokens: list[str], cuts: list[int]) -> None:
    bleep = _docs_example()
    text = "".join(tokens)
    assert run(bleep(), split_at(text, cuts)) == run(bleep(), [text])
