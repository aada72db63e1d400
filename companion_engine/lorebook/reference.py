"""SillyTavern's ``matchKeys`` written out literally: one key, one text, one regex at a time.

The indexed matcher (``index.py``) must agree with this on every input; the
tests use it as the oracle and ``benchmarks/lorebook_scan.py`` as the naive
per-entry baseline. Not used on the serving path.
"""

from __future__ import annotations

import re

import regex

from companion_engine.lorebook.keys import compile_js_regex, parse_js_regex


def st_match(text: str, key: str, *, case_sensitive: bool = False,
             whole_words: bool = True) -> bool:
    """Does ``key`` match ``text`` (the raw scan buffer) as SillyTavern 1.12 decides it?"""
    key = key.strip()
    if not key:
        return False
    parsed = parse_js_regex(key)
    if parsed is not None:
        try:
            pattern, sticky = compile_js_regex(*parsed)
        except regex.error:
            pass
        else:
            return (pattern.match(text) if sticky else pattern.search(text)) is not None
    haystack = text if case_sensitive else text.lower()
    needle = key if case_sensitive else key.lower()
    if not whole_words:
        return needle in haystack
    if len(needle.split()) > 1:
        return needle in haystack
    bounded = re.compile(r"(?:^|[^A-Za-z0-9_])(" + re.escape(needle) + r")(?:$|[^A-Za-z0-9_])")
    return bounded.search(haystack) is not None
