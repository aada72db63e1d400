"""What counts as an emoji: one definition for the splitter and the ``emoji`` cleaner."""

from __future__ import annotations

import re

#: Emoji and pictographs, their modifiers and joiners (ZWJ, variation selectors,
#: keycap, skin tones, regional-indicator flags, tag sequences).
EMOJI_CHARS = (
    "\U0001f000-\U0001faff"  # mahjong .. symbols & pictographs extended-A
    "\U0001fb00-\U0001fbff"
    "\u2600-\u27bf"  # misc symbols, dingbats
    "\u2b00-\u2bff"  # misc symbols and arrows (⭐, ⬆)
    "\u2190-\u21ff"  # arrows
    "\u2300-\u23ff"  # misc technical (⌚, ⏰)
    "\u2460-\u24ff"  # enclosed alphanumerics (Ⓜ)
    "\u25a0-\u25ff"  # geometric shapes (▶)
    "\u3030\u303d\u3297\u3299\u00a9\u00ae\u203c\u2049\u2122\u2139"
    "\u200d"  # zero-width joiner
    "\ufe0e\ufe0f"  # variation selectors
    "\u20e3"  # combining enclosing keycap
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
)
EMOJI_RUN = re.compile(f"[{EMOJI_CHARS}]+")
#: A keycap sequence: ``1️⃣`` is a digit, VS16 and the keycap mark.
KEYCAP = re.compile(r"[0-9#*]\ufe0f?\u20e3")
_ONE = re.compile(f"[{EMOJI_CHARS}]")


def is_emoji(ch: str) -> bool:
    return bool(_ONE.match(ch))


def strip_emoji(text: str) -> str:
    """``text`` without emoji (keycaps included); the spaces around them collapse later."""
    return EMOJI_RUN.sub(" ", KEYCAP.sub(" ", text))


# --- emoticons and kaomoji ----------------------------------------------------------------------

#: ASCII emoticons and kaomoji, as whole tokens: ``:)`` ``;-)`` ``:D`` ``xD`` ``<3`` ``^_^``
#: ``-_-`` ``o_O`` ``T_T`` ``(＾▽＾)`` ``(´・ω・`)`` ``¯\_(ツ)_/¯``.
EMOTICON = (
    r"(?:>?[:;=][-'^o]?[)(\]\[DPpOo03/\\|*>$@]{1,3}"
    r"|[xX][Dd]{1,3}|</?3{1,3}"
    r"|\^[_\-.o]{0,3}\^[;']?"
    r"|[-oO>][_.]{1,2}[-oO<]|[Tt;][_.]{1,2}[Tt;]"
    r"|[(（][^\s()（）A-Za-z0-9]{1,15}[)）][^\s\w]{0,3}"
    r"|¯\\_\(ツ\)_/¯)"
)
_EMOTICON_TOKEN = re.compile(rf"(?<!\S){EMOTICON}(?!\S)")


def strip_emoticons(text: str) -> str:
    """``text`` without standalone emoticons and kaomoji (so no voice says "colon paren")."""
    return _EMOTICON_TOKEN.sub(" ", text) if any(c in text for c in ":;=^()（<-_xXoOTt¯") \
        else text


def strip_emoji_and_emoticons(text: str) -> str:
    """Both, kaomoji first (their ▽ and ◕ are emoji-block characters)."""
    return strip_emoji(strip_emoticons(text))
