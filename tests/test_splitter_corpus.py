"""The splitter on harder text: roleplay, lists, emoticons, ?! runs, ellipses, and languages
beyond English (issue 13). Each text's sentences are fixed here, and every chunking of the
stream (hypothesis) must give exactly those sentences."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.speech.splitter import SentenceScanner, SplitOptions

#: Sentences as written (no merging of short ones, no fast first fragment), so each expected
#: entry is exactly one sentence of the text.
EXACT = SplitOptions(fast_first_fragment=False, min_chars=0)

#: (text, its sentences under ``EXACT``), grouped by what makes them hard.
CORPUS: list[tuple[str, list[str]]] = [
    # roleplay
    ('*She smiles softly.* "Hi there! Come in, the tea is ready." *She steps aside.*',
     ['*She smiles softly.*', '"Hi there!', 'Come in, the tea is ready."', '*She steps aside.*']),
    ('"Hi," she said. "Come in."',
     ['"Hi," she said.', '"Come in."']),
    ('*She smiles. She waves.* Then she leaves the room.',
     ['*She smiles.', 'She waves.*', 'Then she leaves the room.']),
    ('*walks to the window* It is raining again. *sighs*',
     ['*walks to the window* It is raining again.', '*sighs*']),
    ('"Stay," he whispered. *He takes her hand.* "Please."',
     ['"Stay," he whispered.', '*He takes her hand.*', '"Please."']),
    # lists
    ('Here is the plan:\n1. First we eat.\n2. Then we sleep.',
     ['Here is the plan:', '1. First we eat.', '2. Then we sleep.']),
    ('- A bullet item.\n- Another one!\n* A third one',
     ['- A bullet item.', '- Another one!', '* A third one']),
    ('Steps: 1) mix 2) bake. Done.',
     ['Steps: 1) mix 2) bake.', 'Done.']),
    # emoticons
    ("That's great :) I love it. See you soon ^_^ Bye!",
     ["That's great :) I love it.", 'See you soon ^_^ Bye!']),
    ("Great! :D Let's go now. Sure ;) see you. Okay :-) Then we eat.",
     ['Great! :D', "Let's go now.", 'Sure ;) see you.', 'Okay :-) Then we eat.']),
    ('Thanks (。◕‿◕。) see you. (´・ω・`) I see. Bye (＾▽＾)',
     ['Thanks (。◕‿◕。) see you. (´・ω・`)', 'I see.', 'Bye (＾▽＾)']),
    ('I missed you <3 Come home. xD That was funny.',
     ['I missed you <3 Come home. xD', 'That was funny.']),
    # marks
    ('Really?! You did that?!? Wow!!! Okay.',
     ['Really?!', 'You did that?!?', 'Wow!!!', 'Okay.']),
    ('Is it real‽ Yes it is. What?!',
     ['Is it real‽', 'Yes it is.', 'What?!']),
    # ellipses
    ('Well... I guess so. But... wait... no!',
     ['Well...', 'I guess so.', 'But... wait... no!']),
    ('I was thinking… maybe we could go. Or not… Who knows.',
     ['I was thinking… maybe we could go.', 'Or not…', 'Who knows.']),
    # spanish
    ('¿Cómo estás? ¡Muy bien! Gracias por preguntar.',
     ['¿Cómo estás?', '¡Muy bien!', 'Gracias por preguntar.']),
    ('Hola.¿Qué tal? La Sra. García llegó. ¡Qué bien!',
     ['Hola.', '¿Qué tal?', 'La Sra. García llegó.', '¡Qué bien!']),
    # german
    ('Das ist z. B. ein Test. Das heißt d. h. wir gehen. Haus Nr. 5 ist rot. Ende.',
     ['Das ist z. B. ein Test.', 'Das heißt d. h. wir gehen.', 'Haus Nr. 5 ist rot.', 'Ende.']),
    ('Wir treffen uns am 3. Oktober. Das ist gut.',
     ['Wir treffen uns am 3. Oktober.', 'Das ist gut.']),
    ('»Hallo!« sagte er. »Komm rein.« Sie lachte.',
     ['»Hallo!« sagte er.', '»Komm rein.«', 'Sie lachte.']),
    ('Äpfel, Birnen usw. sind gesund. Dann essen wir.',
     ['Äpfel, Birnen usw. sind gesund.', 'Dann essen wir.']),
    # french
    ('« Bonjour ! » dit-il. M. Dupont est là. Il arrive bientôt.',
     ['« Bonjour ! » dit-il.', 'M. Dupont est là.', 'Il arrive bientôt.']),
    ('Ça va ? Oui, très bien ! Et toi ?',
     ['Ça va ?', 'Oui, très bien !', 'Et toi ?']),
    # russian
    ('Привет! Как дела? Всё хорошо. Т. е. нормально.',
     ['Привет!', 'Как дела?', 'Всё хорошо.', 'Т. е. нормально.']),
    ('Это было в 2020 г. Мы жили в Москве.',
     ['Это было в 2020 г.', 'Мы жили в Москве.']),
    # hindi
    ('मैं ठीक हूँ। आप कैसे हैं? धन्यवाद।',
     ['मैं ठीक हूँ।', 'आप कैसे हैं?', 'धन्यवाद।']),
    # arabic
    ('كيف حالك؟ أنا بخير. شكرا لك!',
     ['كيف حالك؟', 'أنا بخير.', 'شكرا لك!']),
    # thai
    ('สวัสดีครับ วันนี้อากาศดีมาก ผมชอบมาก',
     ['สวัสดีครับ', 'วันนี้อากาศดีมาก', 'ผมชอบมาก']),
    # japanese
    ('こんにちは。元気ですか？私は元気です！ありがとう。',
     ['こんにちは。', '元気ですか？', '私は元気です！', 'ありがとう。']),
    ('「本当？」と彼女は聞いた。そうだよ。',
     ['「本当？」と彼女は聞いた。', 'そうだよ。']),
]


def split(text: str, sizes: list[int], options: SplitOptions) -> list[str]:
    scanner = SentenceScanner(options)
    out: list[str] = []
    pos, i = 0, 0
    while pos < len(text):
        size = sizes[i % len(sizes)]
        out += scanner.feed(text[pos : pos + size])
        pos += size
        i += 1
    return out + scanner.finish()


def whole(text: str, options: SplitOptions) -> list[str]:
    scanner = SentenceScanner(options)
    return scanner.feed(text) + scanner.finish()


@pytest.mark.parametrize(("text", "expected"), CORPUS, ids=[t[:30] for t, _ in CORPUS])
def test_corpus_sentences(text: str, expected: list[str]) -> None:
    assert whole(text, EXACT) == expected
    assert split(text, [1], EXACT) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CORPUS), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12))
def test_corpus_in_any_chunking(case: tuple[str, list[str]], sizes: list[int]) -> None:
    text, expected = case
    assert split(text, sizes, EXACT) == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CORPUS), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12),
       first=st.integers(1, 40), min_chars=st.integers(0, 30))
def test_corpus_with_fast_fragment_and_merging_in_any_chunking(
    case: tuple[str, list[str]], sizes: list[int], first: int, min_chars: int
) -> None:
    """The profile's options (first fragment at a clause mark, short sentences merged) still
    give the same sentences however the stream is cut, and lose no text."""
    text, _ = case
    options = SplitOptions(True, first, min_chars, 280)
    expected = whole(text, options)
    assert split(text, sizes, options) == expected
    assert "".join("".join(expected).split()) == "".join(text.split())


#: Pieces of the hard cases, for texts hypothesis composes itself.
PIECES = [
    "Hi", "she said", " ", " ", "\"", "*", "*waves*", "1.", "2)", "- ", "\n", ":)", ";)", ":-)",
    ":D", "^_^", "<3", "xD", "(＾▽＾)", "(´・ω・`)", "(。◕‿◕。)", "?!", "!!!", "‽", "...", "…",
    "¿", "¡", "z.", "B.", "d. h.", "Nr. 5", "3.", "Oktober", "«", "»", "\u202f", "M.", "Т. е.",
    "।", "؟", "สวัสดี", "ครับ", "。", "？", "「", "」と", "Then", "the", ".", "`",
]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(PIECES), max_size=50),
       sizes=st.lists(st.integers(1, 10), min_size=1, max_size=10),
       fast=st.booleans(), min_chars=st.integers(0, 20))
def test_composed_hard_text_in_any_chunking(parts: list[str], sizes: list[int], fast: bool,
                                            min_chars: int) -> None:
    text = "".join(parts)
    options = SplitOptions(fast, 20, min_chars, 120)
    expected = whole(text, options)
    assert split(text, sizes, options) == expected
    assert "".join("".join(expected).split()) == "".join(text.split())
    assert all(s == s.strip() and s for s in expected)
