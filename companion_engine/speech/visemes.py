"""Mouth shapes from phonemes, for lip sync.

espeak-ng reports each phoneme (in IPA) with its time in the audio; a client
animating a face wants one of a small set of mouth shapes instead. The set is
the 15 visemes of the Oculus/Meta lip-sync standard, which VRM/Live2D tooling
understands: ``sil PP FF TH DD kk CH SS nn RR aa E ih oh ou``.
"""

from __future__ import annotations

from typing import Any

#: Leading IPA characters -> viseme; longest prefixes are tried first.
_PREFIXES: dict[str, str] = {
    "tʃ": "CH", "dʒ": "CH", "ʧ": "CH", "ʤ": "CH", "ʃ": "CH", "ʒ": "CH", "ɕ": "CH", "ʑ": "CH",
    "p": "PP", "b": "PP", "m": "PP", "ɸ": "PP", "β": "PP",
    "f": "FF", "v": "FF", "ʋ": "FF",
    "θ": "TH", "ð": "TH",
    "t": "DD", "d": "DD", "ɾ": "DD", "ʈ": "DD", "ɖ": "DD",
    "k": "kk", "g": "kk", "ɡ": "kk", "ŋ": "kk", "x": "kk", "ɣ": "kk", "q": "kk", "h": "kk",
    "ɦ": "kk", "χ": "kk", "ʔ": "sil",
    "s": "SS", "z": "SS", "ts": "SS", "dz": "SS",
    "n": "nn", "l": "nn", "ɫ": "nn", "ɲ": "nn", "ɳ": "nn", "ʎ": "nn", "ɭ": "nn",
    "r": "RR", "ɹ": "RR", "ɻ": "RR", "ʁ": "RR", "ʀ": "RR", "ɚ": "RR", "ɝ": "RR",
    "a": "aa", "ɑ": "aa", "æ": "aa", "ʌ": "aa", "ɐ": "aa", "ɒ": "oh",
    "e": "E", "ɛ": "E", "ə": "E", "ɜ": "E", "ɘ": "E", "œ": "E", "ø": "E",
    "i": "ih", "ɪ": "ih", "j": "ih", "y": "ih", "ɨ": "ih", "ʏ": "ih",
    "o": "oh", "ɔ": "oh",
    "u": "ou", "ʊ": "ou", "w": "ou", "ɯ": "ou", "ʉ": "ou",
}
_MAX_PREFIX = max(len(k) for k in _PREFIXES)
#: Stress and length marks espeak puts around the phoneme itself.
_MARKS = str.maketrans("", "", "ˈˌːˑ'\",%=_|")


def viseme_for(phoneme: str) -> str:
    """The viseme of one IPA phoneme; silence for pauses and anything unknown."""
    p = phoneme.translate(_MARKS).strip()
    for size in range(min(_MAX_PREFIX, len(p)), 0, -1):
        v = _PREFIXES.get(p[:size])
        if v is not None:
            return v
    return "sil"


def visemes_from_phonemes(
    phonemes: list[tuple[int, str]], duration_ms: int
) -> list[dict[str, Any]]:
    """``[(time_ms, phoneme)]`` to ``[{time_ms, viseme, phoneme}]``, repeats merged."""
    out: list[dict[str, Any]] = []
    for time_ms, phoneme in phonemes:
        viseme = viseme_for(phoneme)
        if out and out[-1]["viseme"] == viseme:
            continue
        if out and out[-1]["time_ms"] == time_ms:
            out.pop()
        out.append({"time_ms": time_ms, "viseme": viseme, "phoneme": phoneme})
    if not out or out[-1]["viseme"] != "sil":
        out.append({"time_ms": max(duration_ms, out[-1]["time_ms"] if out else 0),
                    "viseme": "sil", "phoneme": ""})
    return out
