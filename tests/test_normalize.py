"""English speech normalisation (the ``normalize`` cleaner) and the pronunciation lexicon."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from companion_engine.config import Profile
from companion_engine.speech.lexicon import lexicon
from companion_engine.speech.normalize import cardinal, normalize_en, ordinal, year

CASES = [
    ("It costs $29.50 today.", "It costs twenty-nine dollars fifty today."),
    ("$1 only", "one dollar only"),
    ("$0.50 each", "fifty cents each"),
    ("€5 and £2.30", "five euros and two pounds thirty"),
    ("$1,000,000 prize", "one million dollars prize"),
    ("$2 billion", "two billion dollars"),
    ("Pi is 3.14.", "Pi is three point one four."),
    ("Meet at 12:30.", "Meet at twelve thirty."),
    ("At 9:05 am sharp", "At nine oh five a m sharp"),
    ("at 3:00 PM", "at three p m"),
    ("at 7pm", "at seven p m"),
    ("at 15:00", "at fifteen hundred"),
    ("the 1st, 22nd, 13th and 101st", "the first, twenty-second, thirteenth and one hundred first"),
    ("50% off", "fifty percent off"),
    ("I ran 5km and 10 miles", "I ran five kilometers and ten miles"),
    ("It weighs 3 kg", "It weighs three kilograms"),
    ("20°C outside", "twenty degrees Celsius outside"),
    ("born in 1980", "born in nineteen eighty"),
    ("since 2005", "since two thousand five"),
    ("the 1990s", "the nineteen nineties"),
    ("on 2024-03-15", "on March fifteenth, twenty twenty-four"),
    ("on 3/15/2024", "on March fifteenth, twenty twenty-four"),
    ("on March 15, 2024", "on March fifteenth, twenty twenty-four"),
    ("the 15th of March", "the the fifteenth of March"),
    ("1,000 people", "one thousand people"),
    ("-5 degrees", "minus five degrees"),
    ("version v1.2.3 is out", "version v1.2.3 is out"),
    ("Call 555-123-4567", "Call five five five, one two three, four five six seven"),
    ("I have 2 cats and 1 dog.", "I have two cats and one dog."),
    ("mp3 files and 4K video", "mp3 files and 4K video"),
    ("5 in the box", "five in the box"),
    ("1/2 cup", "one half cup"),
    ("R&D", "R and D"),
    ("No digits at all.", "No digits at all."),
]


@pytest.mark.parametrize(("text", "spoken"), CASES, ids=[c[0] for c in CASES])
def test_normalize_en(text: str, spoken: str) -> None:
    assert normalize_en(text) == spoken


def test_number_words() -> None:
    assert cardinal(0) == "zero"
    assert cardinal(1_234_567) == "one million two hundred thirty-four thousand five hundred " \
        "sixty-seven"
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 20, 21, 100)] == [
        "first", "second", "third", "fourth", "eleventh", "twelfth", "twentieth",
        "twenty-first", "one hundredth"]
    assert [year(y) for y in (1905, 1900, 2000, 2010, 1066)] == [
        "nineteen oh five", "nineteen hundred", "two thousand", "twenty ten", "ten sixty-six"]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-10**15, max_value=10**15))
def test_any_integer_becomes_words(n: int) -> None:
    out = normalize_en(f"I counted {n} stars.")
    assert not any(ch.isdigit() for ch in out)
    assert out.startswith("I counted ") and out.endswith(" stars.")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789 .,:$%-/°CkmgKMpa£€&+st")),
               max_size=40) | st.text(max_size=60))
def test_any_text_is_handled(text: str) -> None:
    out = normalize_en(text)
    assert isinstance(out, str)
    assert normalize_en(out.replace("\U000f0000", "")) is not None


# --- lexicon --------------------------------------------------------------------------------


def test_lexicon_replaces_whole_words_with_case_rules() -> None:
    lex = lexicon({"Seraphina": "Sera-feena", "nyx": "nix", "US": "you ess", "New York":
                   "Noo York", "New York City": "the big apple"})
    assert lex.apply("Seraphina and seraphina") == "Sera-feena and seraphina"  # capital: exact
    assert lex.apply("Nyx, NYX and nyx.") == "nix, nix and nix."  # lowercase key: any case
    assert lex.apply("Tell us about the US.") == "Tell us about the you ess."
    assert lex.apply("New York City and New York") == "the big apple and Noo York"
    assert lex.apply("Nyxes and Seraphinas") == "Nyxes and Seraphinas"  # whole words only


def test_lexicon_layers_card_over_profile() -> None:
    lex = lexicon({"Aria": "Ah-ria", "GIF": "gif"}, {"GIF": "jif"})
    assert lex.apply("Aria's GIF") == "Ah-ria's jif"
    assert not lexicon({}, None)
    assert lexicon({"a": "b"}) is lexicon({"a": "b"})  # compiled once per content


@pytest.mark.parametrize("bad", [{"": "x"}, {"a\nb": "x"}, {"k" * 101: "x"}, {"a": 5},
                                 {"a": "x" * 401}, ["not", "a", "map"]])
def test_lexicon_garbage_in_the_profile_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        Profile.model_validate({"speech": {"lexicon": bad}})


def test_speech_config_names() -> None:
    p = Profile.model_validate({"speech": {
        "voices": {"dialogue": "en-us+f3", "narration": "none"}, "lexicon": {"Aria": "Ah-ria"},
        "audio_format": "opus", "chunked_audio": True, "max_backlog_chars": 5000}})
    assert p.speech.voices is not None and p.speech.voices.narration == "none"
    assert p.speech.audio_format == "opus" and p.speech.chunked_audio
    assert Profile().speech.audio_format is None  # unset: as the backend makes it
    for bad in ({"audio_format": "flac"}, {"voices": {"dialog": "x"}},
                {"voices": {"narration": "../etc/passwd"}}, {"chunked_audio": "maybe"},
                {"max_backlog_chars": 0}, {"voices": "en-us"}):
        with pytest.raises(ValidationError):
            Profile.model_validate({"speech": bad})


# --- emoticons ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "spoken"), [
    ("That's great :) I love it ;-) really", "That's great I love it really"),
    ("See you ^_^ bye (＾▽＾) and (´・ω・`) ok <3", "See you bye and ok"),
    ("Great! :D xD", "Great!"),
    ("Time 12:30 and a:b and (see) and x-y and T_T", "Time 12:30 and a:b and (see) and x-y and"),
    ("¯\\_(ツ)_/¯ whatever", "whatever"),
])
def test_emoji_cleaner_drops_emoticons_and_kaomoji(text: str, spoken: str) -> None:
    from companion_engine.speech.emoji import strip_emoji_and_emoticons
    from companion_engine.speech.session import speakable

    assert speakable(strip_emoji_and_emoticons(text)) == spoken
