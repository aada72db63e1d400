"""JSON from clients: one decoder for every body, card file and PNG card chunk.

``json.loads`` turns most bad input into a ``JSONDecodeError``, but not all of it:
an integer of more than 4,300 digits raises a bare ``ValueError`` (Python's guard
against quadratic int parsing), very deep nesting a ``RecursionError``, and some
input parses into values that break later, far from the parser: ``NaN`` and
``Infinity`` (not JSON at all; they would be sent on to an LLM provider as
invalid JSON), numbers like ``1e999`` that overflow to infinity, and strings
holding an unpaired UTF-16 surrogate (``"\\ud800"``), which cannot be encoded as
UTF-8 and so fail when stored or sent. ``loads`` refuses all of them with one
``JSONInputError`` that says why; callers turn it into their 400.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

#: Deepest nesting accepted: real bodies (cards included) stay far below it, and a
#: deeper one would only cost recursion in the validators.
MAX_JSON_DEPTH = 64

#: A ``\uD800``-``\uDFFF`` escape: only such text can decode to a lone surrogate
#: (strict UTF-8 decoding already refuses encoded ones).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JSONInputError(ValueError):
    """Client JSON that is malformed or holds a value we refuse; ``reason`` says which."""

    def __init__(self, detail: str, line: int | None = None, column: int | None = None) -> None:
        #: What is wrong, on its own ("a number has more than 4300 digits").
        self.detail = detail
        #: The same as a sentence for a client ("malformed JSON: Expecting ...").
        self.reason = f"malformed JSON: {detail}" if line is not None else detail
        super().__init__(self.reason)
        self.line = line
        self.column = column


def _no_constant(name: str) -> Any:
    raise JSONInputError(f"{name} is not valid JSON (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 40 else f"{text[:37]}..."
        raise JSONInputError(f"number {shown} is out of range (not a finite double)")
    return value


def json_depth(value: Any, *, check_strings: bool = False) -> int:
    """Nesting depth of parsed JSON (``1`` for a flat list or object), without recursion;
    with ``check_strings``, also refuse a lone surrogate in any string or key."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if check_strings:
                for key in node:
                    _check_string(key)
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            for child in node:
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1))
                elif check_strings and isinstance(child, str):
                    _check_string(child)
        elif check_strings and isinstance(node, str):
            _check_string(node)
    return deepest


def _check_string(text: str) -> None:
    m = _SURROGATE.search(text)
    if m is not None:
        raise JSONInputError(f"a string holds an unpaired UTF-16 surrogate "
                             f"(\\u{ord(m.group()):04x}); it is not valid Unicode")


def loads(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse client JSON, refusing anything that is not a faithful, finite, UTF-8 value.

    Bytes must be UTF-8 (a BOM is allowed). Raises ``JSONInputError``.
    """
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JSONInputError(f"not UTF-8 (byte {exc.start}: {exc.reason})") from None
    else:
        text = data
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except JSONInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONInputError(f"{exc.msg} at line {exc.lineno} column {exc.colno}",
                             exc.lineno, exc.colno) from None
    except RecursionError:
        raise JSONInputError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError:  # int() refusing a huge integer literal (sys.get_int_max_str_digits)
        limit = sys.get_int_max_str_digits()
        raise JSONInputError(f"a number has more than {limit} digits") from None
    if json_depth(value, check_strings=_SURROGATE_ESCAPE.search(text) is not None) > max_depth:
        raise JSONInputError(f"JSON nested deeper than {max_depth} levels")
    return value
