"""From a chat message to full-text search terms.

Words as SQLite's ``unicode61`` tokenizer splits them (letters and digits;
everything else separates), lower-cased, without English stop words and
one-letter words, first occurrence first. Each term is quoted in the FTS5
query, so no user text is ever read as query syntax.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[^\W_]+")
#: Words too common to say what a message is about (English).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren as at be because been before
being below between both but by can cannot could couldn did didn do does doesn doing don down
during each few for from further had hadn has hasn have haven having he her here hers herself
him himself his how i if in into is isn it its itself just let ll me more most mustn my myself
no nor not now of off on once only or other ought our ours ourselves out over own re same
shan she should shouldn so some such than that the their theirs them themselves then there
these they this those through to too under until up ve very was wasn we were weren what when
where which while who whom why will with won would wouldn you your yours yourself yourselves
yes yeah ok okay oh hi hello hey well really also still even much many lot get got go going
know think want like one two tell said say says thing things something anything way
""".split())
#: Longest query, in terms.
MAX_TERMS = 24


def query_terms(text: str, *, max_terms: int = MAX_TERMS) -> list[str]:
    """The distinct meaningful words of ``text``, in order of appearance."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if len(word) < 2 and word.isascii():
            continue
        if word in STOP_WORDS or word in seen:
            continue
        seen[word] = None
        if len(seen) >= max_terms:
            break
    return list(seen)


def fts_query(terms: list[str]) -> str:
    """An FTS5 query matching any of ``terms`` (each a quoted string)."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
