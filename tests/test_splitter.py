"""The streaming sentence splitter: tricky texts, chunking invariance, lengths, first fragment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.builtin.splitters import Sentence
from companion_engine.config import Profile
from companion_engine.speech.splitter import SentenceScanner, SplitOptions
from companion_engine.turn import Turn

#: (text, sentences with the default options)
TABLE: list[tuple[str, list[str]]] = [
    # abbreviations, titles, initials
    ("Hello Mr. Smith. How are you today? I'm fine, thanks!",
     ["Hello Mr. Smith.", "How are you today?", "I'm fine, thanks!"]),
    ("Dr. Watson arrived at 5 p.m. He was late.",
     ["Dr. Watson arrived at 5 p.m.", "He was late."]),
    ("The U.S. Senate voted. Then it adjourned.", ["The U.S. Senate voted.", "Then it adjourned."]),
    ("I met J. R. R. Tolkien in the U.S. Army. It was at 9 a.m. Then we left.",
     ["I met J. R. R. Tolkien in the U.S. Army.", "It was at 9 a.m.", "Then we left."]),
    ("e.g. this one. i.e. that one. Alright then.", ["e.g. this one. i.e. that one.",
                                                    "Alright then."]),
    ("No. I won't. See No. 5 and Fig. 3 for more details on this.",
     ["No.", "I won't. See No. 5 and Fig. 3 for more details on this."]),
    ("She works at Acme Inc. and loves it. Ok then.",
     ["She works at Acme Inc. and loves it.", "Ok then."]),
    # numbers, prices, versions, files, URLs, e-mails
    ("Pi is 3.14 and the price is $29.50. That's cheap.",
     ["Pi is 3.14 and the price is $29.50.", "That's cheap."]),
    ("It happened in 1980. The year after was 1981. That's all.",
     ["It happened in 1980.", "The year after was 1981.", "That's all."]),
    ("Check the file config.yaml. It has v2.3.1 settings.",
     ["Check the file config.yaml.", "It has v2.3.1 settings."]),
    ("Visit https://example.com/a.b?x=1 for details. Then email bob@example.com. Done.",
     ["Visit https://example.com/a.b?x=1 for details.", "Then email bob@example.com.", "Done."]),
    ("We sold 1,000 units at 12:30, more than expected for a launch. Nice.",
     ["We sold 1,000 units at 12:30,", "more than expected for a launch.", "Nice."]),
    ("1. First item\n2. Second item\n3. Third item",
     ["1. First item", "2. Second item", "3. Third item"]),
    # quotes, brackets, repeated marks, ellipses
    ("She said \"Hello there.\" Then she left. (It was late.) We slept.",
     ["She said \"Hello there.\"", "Then she left.", "(It was late.)", "We slept."]),
    ("\"Why?\" she asked. \"Because I said so!\" he replied.",
     ["\"Why?\" she asked.", "\"Because I said so!\" he replied."]),
    ("Really?! That's amazing!!! I can't believe it.",
     ["Really?!", "That's amazing!!!", "I can't believe it."]),
    ("That's it... for now. But tomorrow... Tomorrow we fight.",
     ["That's it... for now.", "But tomorrow...", "Tomorrow we fight."]),
    ("Wait\u2026 what was that? Well\u2026 I don't know.",
     ["Wait\u2026 what was that?", "Well\u2026 I don't know."]),
    # CJK
    ("你好。我是小明！你呢？我们走吧。", ["你好。", "我是小明！", "你呢？我们走吧。"]),
    ("嗯，好的。我们现在就出发吧，路上小心！", ["嗯，好的。", "我们现在就出发吧，路上小心！"]),
    ("今日はいい天気ですね。散歩に行きましょう！",
     ["今日はいい天気ですね。", "散歩に行きましょう！"]),
    ("「本当？」と彼女は聞いた。はい。", ["「本当？」と彼女は聞いた。", "はい。"]),
    # emoji stay with their sentence
    ("Great! 😊 Let's go. Ok. Sure thing my friend.",
     ["Great! 😊", "Let's go. Ok.", "Sure thing my friend."]),
    ("I love you 💕. You're the best 🥰! See you soon.",
     ["I love you 💕.", "You're the best 🥰!", "See you soon."]),
    # markdown, actions, tags, code
    ("**Important:** read this first. *sighs* Okay then.",
     ["**Important:** read this first.", "*sighs* Okay then."]),
    ("*waves happily* Hi there! *smiles.* How are you doing?",
     ["*waves happily* Hi there!", "*smiles.* How are you doing?"]),
    ("[joy] Hello there! [wave] How are you?", ["[joy] Hello there!", "[wave] How are you?"]),
    ("[Happy. Very.] Hello there, friend of mine! Yes.",
     ["[Happy. Very.] Hello there,", "friend of mine!", "Yes."]),
    ("Use `os.path.join()`. It works. See [the docs. Really](https://x.org/a.b). Next one.",
     ["Use `os.path.join()`.", "It works. See [the docs. Really](https://x.org/a.b).",
      "Next one."]),
    ("Here is code:\n```python\nprint('hi. there')\nx = 1\n```\nDone now.",
     ["Here is code:", "```python\nprint('hi. there')\nx = 1\n```", "Done now."]),
    ("It's at <speed ratio=\"1.05\">fast. Ok.</speed> Done! Then <br> we go. Yes.",
     ["It's at <speed ratio=\"1.05\">fast. Ok.</speed> Done!", "Then <br> we go.", "Yes."]),
    ("Some text <break time=\"1.5s\"/> more text. End.",
     ["Some text <break time=\"1.5s\"/> more text.", "End."]),
    ("If a < b. Then fine.", ["If a < b.", "Then fine."]),
    # fast first fragment
    ("Oh, hi! I didn't see you there, come in and sit down.",
     ["Oh, hi!", "I didn't see you there, come in and sit down."]),
    ("Well, I think that is a good idea, but we should wait until tomorrow morning.",
     ["Well, I think that is a good idea,", "but we should wait until tomorrow morning."]),
    ("Hmm; let me think about that for a second: yes.",
     ["Hmm; let me think about that for a second:", "yes."]),
    ("\"Hello there, my good friend,\" she said warmly. Welcome.",
     ["\"Hello there, my good friend,\"", "she said warmly.", "Welcome."]),
    # newlines, merging
    ("Line one\nLine two\n\nLine three is here.", ["Line one", "Line two\n\nLine three is here."]),
    ("Sure. Ok. Fine. This is longer now. Yes.", ["Sure.", "Ok. Fine. This is longer now.",
                                                  "Yes."]),
    ("one.Two three. It was fine.", ["one.", "Two three. It was fine."]),
]


def split_whole(text: str, options: SplitOptions | None = None) -> list[str]:
    scanner = SentenceScanner(options)
    return scanner.feed(text) + scanner.finish()


def split_chunked(text: str, sizes: list[int], options: SplitOptions | None = None) -> list[str]:
    scanner = SentenceScanner(options)
    out: list[str] = []
    pos = 0
    i = 0
    while pos < len(text):
        size = sizes[i % len(sizes)] if sizes else 1
        out += scanner.feed(text[pos : pos + size])
        pos += size
        i += 1
    return out + scanner.finish()


@pytest.mark.parametrize(("text", "expected"), TABLE, ids=[t[:40] for t, _ in TABLE])
def test_table(text: str, expected: list[str]) -> None:
    assert split_whole(text) == expected


@pytest.mark.parametrize(("text", "expected"), TABLE, ids=[t[:40] for t, _ in TABLE])
def test_table_token_by_token(text: str, expected: list[str]) -> None:
    assert split_chunked(text, [1]) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(TABLE), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12))
def test_table_in_random_chunkings(case: tuple[str, list[str]], sizes: list[int]) -> None:
    text, expected = case
    assert split_chunked(text, sizes) == expected


PIECES = [
    "Hello", "world", "the", "I", "It", "then", "Then", "Mr.", "Dr.", "e.g.", "U.S.", "etc.",
    "3.14", "$29.50", "1,000", "12:30", "v1.0.0", "a.m.", "J.", "file.txt", "bob@x.org",
    "https://a.b/c?d=1", ".", "!", "?", "...", "…", ",", ";", ":", "—", "\n", "\n\n", " ", " ",
    " ", "\"", "'", ")", "(", "[joy]", "[", "]", "](u.r.l)", "<b>", "</b>", "<br/>", "<", ">",
    "`", "```", "*", "**", "。", "，", "你好", "好的", "😊", "🎉", "¿", "x", "1.",
]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(PIECES), max_size=60),
       sizes=st.lists(st.integers(1, 12), min_size=1, max_size=10),
       first=st.integers(1, 30), min_chars=st.integers(0, 20), max_chars=st.integers(20, 80),
       fast=st.booleans())
def test_any_text_same_sentences_in_any_chunking_and_nothing_lost(
    parts: list[str], sizes: list[int], first: int, min_chars: int, max_chars: int, fast: bool
) -> None:
    text = "".join(parts)
    options = SplitOptions(fast, first, min_chars, max_chars)
    whole = split_whole(text, options)
    assert split_chunked(text, sizes, options) == whole
    assert "".join("".join(whole).split()) == "".join(text.split())
    assert all(s == s.strip() and s for s in whole)


def test_fast_first_fragment_off_waits_for_the_sentence() -> None:
    text = "Well, I think that is a good idea, but we should wait."
    assert split_whole(text, SplitOptions(fast_first_fragment=False)) == [text]
    assert split_whole(text)[0] == "Well, I think that is a good idea,"


def test_first_fragment_min_chars_counts_cjk_wider() -> None:
    # 7 CJK characters reach the default of 20; 6 do not.
    assert split_whole("我们现在就出发，好吗我的朋友。")[0] == "我们现在就出发，"
    assert split_whole("我们现在出发，好吗我的朋友。") == ["我们现在出发，好吗我的朋友。"]


def test_only_the_first_piece_ends_at_a_clause_mark() -> None:
    text = ("First we talk about the weather, then the news. After that, we eat dinner together, "
            "and then we sleep.")
    assert split_whole(text) == ["First we talk about the weather,", "then the news.",
                                 "After that, we eat dinner together, and then we sleep."]


def test_short_later_sentences_merge_into_the_next() -> None:
    options = SplitOptions(min_chars=30)
    assert split_whole("Hi! Yes. No. Maybe so. This one is long enough on its own.", options) == [
        "Hi!", "Yes. No. Maybe so. This one is long enough on its own."]


def test_long_sentences_are_cut_at_clause_marks_then_spaces() -> None:
    options = SplitOptions(fast_first_fragment=False, max_chars=60)
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    text = f"This starts fine and then, after a while, it goes on: {words} {words}."
    out = split_whole(text, options)
    assert all(len(s) <= 60 for s in out)
    assert out[0].endswith(":")
    assert " ".join(out) == text
    assert split_chunked(text, [3], options) == out
    hard = split_whole("x" * 130, options)
    assert hard == ["x" * 60, "x" * 60, "x" * 10]


def test_first_fragment_needs_no_lookahead_unless_a_number_or_quote_is_open() -> None:
    scanner = SentenceScanner()
    assert scanner.feed("Oh my, after all that happened today,") == [
        "Oh my, after all that happened today,"]
    scanner = SentenceScanner()
    assert scanner.feed("\"Oh my, after all that happened today,") == []
    assert scanner.feed("\" she said.") == ["\"Oh my, after all that happened today,\""]
    scanner = SentenceScanner()
    assert scanner.feed("We counted them all and found 1,") == []
    assert scanner.feed("000 of them.") == []
    assert scanner.finish() == ["We counted them all and found 1,000 of them."]
    for text in ["Tom and Jerry went home,together at last.", "Tom &amp; Jerry went home; yes."]:
        assert split_chunked(text, [1]) == split_whole(text)
    assert split_whole("Tom &amp; Jerry went home; yes.") == ["Tom &amp; Jerry went home;",
                                                              "yes."]


def test_a_decision_waits_for_its_lookahead() -> None:
    scanner = SentenceScanner()
    assert scanner.feed("The price is $29.") == []
    assert scanner.feed("50") == []
    assert scanner.feed(". Next") == ["The price is $29.50."]
    assert scanner.feed(" one is Mr.") == []
    assert scanner.feed(" Smith.") == []
    assert scanner.finish() == ["Next one is Mr. Smith."]


def test_a_tag_split_across_tokens_is_never_cut() -> None:
    scanner = SentenceScanner()
    out: list[str] = []
    for token in ["Hi", "!", " [", "jo", "y. ", "ok]", " Nice to", " see you. ", "Bye."]:
        out += scanner.feed(token)
    out += scanner.finish()
    assert out == ["Hi!", "[joy. ok] Nice to see you.", "Bye."]


async def test_stage_splits_an_async_token_stream() -> None:
    stage = Sentence(Sentence.Options(first_fragment_min_chars=10))
    turn = Turn(profile=Profile(), user_message="hi")

    async def tokens() -> AsyncIterator[str]:
        for tok in ["Well", ",", " hello", " there", ",", " friend", ".", " How", " are",
                    " you", "?"]:
            yield tok

    assert [s async for s in stage.split(tokens(), turn)] == [
        "Well, hello there,", "friend. How are you?"]


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="min_chars"):
        Sentence.Options(min_chars=500, max_chars=100)
    with pytest.raises(ValueError):
        Sentence.Options(colour="red")  # type: ignore[call-arg]
