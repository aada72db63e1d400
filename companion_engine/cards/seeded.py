"""SillyTavern's string hash and seeded random numbers, bit for bit.

``{{pick}}`` must choose what SillyTavern chooses for the same conversation and
text, so these follow its ``getStringHash`` (cyrb53 over UTF-16 code units) and
the ``seedrandom`` library it uses (ARC4, RC4-drop[256]) exactly; the tests
check them against vectors computed by SillyTavern's own code.
"""

from __future__ import annotations

_M32 = 0xFFFFFFFF
_WIDTH = 256
_MASK = _WIDTH - 1
_CHUNKS = 6
_START_DENOM = float(_WIDTH**_CHUNKS)
_SIGNIFICANCE = float(2**52)
_OVERFLOW = _SIGNIFICANCE * 2


def utf16_units(text: str) -> list[int]:
    """``text`` as JavaScript sees it: UTF-16 code units (``charCodeAt``)."""
    data = text.encode("utf-16-le", "surrogatepass")
    return [data[i] | (data[i + 1] << 8) for i in range(0, len(data), 2)]


def utf16_len(text: str) -> int:
    """JavaScript's ``text.length``."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _imul(a: int, b: int) -> int:
    return (a * b) & _M32


def string_hash(text: str, seed: int = 0) -> int:
    """SillyTavern's ``getStringHash`` (cyrb53): a 53-bit integer."""
    h1 = 0xDEADBEEF ^ seed
    h2 = 0x41C6CE57 ^ seed
    for ch in utf16_units(text):
        h1 = _imul(h1 ^ ch, 2654435761)
        h2 = _imul(h2 ^ ch, 1597334677)
    h1 = _imul(h1 ^ (h1 >> 16), 2246822507) ^ _imul(h2 ^ (h2 >> 13), 3266489909)
    h2 = _imul(h2 ^ (h2 >> 16), 2246822507) ^ _imul(h1 ^ (h1 >> 13), 3266489909)
    return 4294967296 * (2097151 & h2) + (h1 & _M32)


def js_number(value: int | float) -> str:
    """A number as JavaScript's ``String(n)`` writes it (integers only need to agree)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return str(value)


class SeedRandom:
    """``new Math.seedrandom(seed)`` from seedrandom 3: floats in [0, 1), ARC4-based."""

    def __init__(self, seed: str | int | float) -> None:
        # flatten(): a string seed is used as is, anything else becomes String(x) + "\0".
        text = seed if isinstance(seed, str) else js_number(seed) + "\0"
        key: list[int] = []
        smear = 0
        for j, unit in enumerate(utf16_units(text)):
            slot = _MASK & j
            old = key[slot] if slot < len(key) else 0
            smear ^= old * 19
            value = _MASK & (smear + unit)
            if slot < len(key):
                key[slot] = value
            else:
                key.append(value)
        if not key:
            key = [0]
        s = list(range(_WIDTH))
        j = 0
        for i in range(_WIDTH):
            t = s[i]
            j = _MASK & (j + key[i % len(key)] + t)
            s[i] = s[j]
            s[j] = t
        self._s, self._i, self._j = s, 0, 0
        self._bytes(_WIDTH)  # RC4-drop[256]

    def _bytes(self, count: int) -> int:
        s, i, j = self._s, self._i, self._j
        r = 0
        for _ in range(count):
            i = _MASK & (i + 1)
            t = s[i]
            j = _MASK & (j + t)
            s[i] = s[j]
            s[j] = t
            r = (r * _WIDTH + s[_MASK & (s[i] + s[j])]) if count <= _CHUNKS else 0
        self._i, self._j = i, j
        return r

    def random(self) -> float:
        n = float(self._bytes(_CHUNKS))
        d = _START_DENOM
        x = 0
        while n < _SIGNIFICANCE:
            n = (n + x) * _WIDTH
            d *= _WIDTH
            x = self._bytes(1)
        while n >= _OVERFLOW:
            n /= 2
            d /= 2
            x >>= 1
        return (n + x) / d
