"""PNG chunks: find the card text in an image, and write it back.

Cards ride in ``tEXt`` chunks (keyword ``chara`` for V1/V2, ``ccv3`` for V3)
that may sit anywhere between ``IHDR`` and ``IEND``, so the reader walks every
chunk. Every CRC is checked and the walk is bounded (chunk count, declared
lengths), so a truncated or hostile file fails with a message instead of a
hang, a huge allocation or a half-read card.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from companion_engine.cards.errors import CardError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Keywords of the text chunks that carry a card, most preferred first.
CARD_KEYWORDS = ("ccv3", "chara")
MAX_CHUNKS = 100_000
_HEADER = struct.Struct(">I4s")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One PNG chunk: its 4-letter type and its payload (CRC already verified)."""

    type: bytes
    data: bytes

    def encode(self) -> bytes:
        crc = zlib.crc32(self.type + self.data) & 0xFFFFFFFF
        return _HEADER.pack(len(self.data), self.type) + self.data + struct.pack(">I", crc)

    def text(self) -> tuple[str, str] | None:
        """``(keyword, text)`` of a ``tEXt`` chunk (both Latin-1 per the PNG spec)."""
        if self.type != b"tEXt":
            return None
        keyword, nul, text = self.data.partition(b"\x00")
        if not nul or not 1 <= len(keyword) <= 79:
            return None
        return keyword.decode("latin-1"), text.decode("latin-1")


def is_png(data: bytes) -> bool:
    return data.startswith(SIGNATURE)


def read_chunks(data: bytes) -> list[Chunk]:
    """Every chunk up to and including ``IEND``; ``CardError`` (400) if the file is damaged."""
    if not is_png(data):
        raise CardError("not a PNG file (the PNG signature is missing)", status=400)
    view = memoryview(data)
    chunks: list[Chunk] = []
    pos = len(SIGNATURE)
    while True:
        if len(chunks) >= MAX_CHUNKS:
            raise CardError(f"PNG has more than {MAX_CHUNKS} chunks; refusing to read it",
                            status=400)
        if pos + 12 > len(data):
            raise CardError(f"truncated PNG: the file ends at byte {len(data)} before the "
                            "IEND chunk", status=400)
        length, ctype = _HEADER.unpack_from(view, pos)
        if not (ctype.isalpha() and ctype.isascii()):
            raise CardError(f"damaged PNG: invalid chunk type at byte {pos}", status=400)
        name = ctype.decode("ascii")
        end = pos + 8 + length
        if length > 0x7FFFFFFF or end + 4 > len(data):
            raise CardError(f"truncated PNG: chunk {name} at byte {pos} declares {length} bytes "
                            f"but the file ends at byte {len(data)}", status=400)
        body = bytes(view[pos + 8:end])
        (crc,) = struct.unpack_from(">I", view, end)
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            raise CardError(f"damaged PNG: chunk {name} at byte {pos} fails its CRC check",
                            status=400)
        chunks.append(Chunk(ctype, body))
        pos = end + 4
        if ctype == b"IEND":
            return chunks


def card_texts(chunks: list[Chunk]) -> list[tuple[str, str]]:
    """Card-carrying ``(keyword, text)`` pairs, preferred first (``ccv3`` before ``chara``).

    Keywords compare case-insensitively, as SillyTavern does; the first chunk of
    each keyword wins.
    """
    found: dict[str, str] = {}
    for chunk in chunks:
        pair = chunk.text()
        if pair is None:
            continue
        keyword = pair[0].lower()
        if keyword in CARD_KEYWORDS and keyword not in found:
            found[keyword] = pair[1]
    return [(k, found[k]) for k in CARD_KEYWORDS if k in found]


def encode(chunks: list[Chunk]) -> bytes:
    return SIGNATURE + b"".join(c.encode() for c in chunks)


def embed_texts(png: bytes, texts: list[tuple[str, str]]) -> bytes:
    """``png`` with every card chunk replaced by ``texts``, inserted just before ``IEND``."""
    kept = [
        c for c in read_chunks(png)
        if c.type != b"IEND" and not ((t := c.text()) and t[0].lower() in CARD_KEYWORDS)
    ]
    new = [Chunk(b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1"))
           for k, v in texts]
    return encode([*kept, *new, Chunk(b"IEND", b"")])


#: Text chunks: metadata only, never needed to show the image.
TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def image_only(png: bytes) -> bytes:
    """``png`` without its text chunks (the card in it): the picture alone, much smaller."""
    return encode([c for c in read_chunks(png) if c.type not in TEXT_CHUNKS])


def placeholder_png(seed: str, size: int = 64) -> bytes:
    """A small solid-colour RGB image (colour derived from ``seed``) for cards without one."""
    rgb = hashlib.sha256(seed.encode("utf-8")).digest()[:3]
    row = b"\x00" + rgb * size
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return encode([
        Chunk(b"IHDR", ihdr),
        Chunk(b"IDAT", zlib.compress(row * size, 9)),
        Chunk(b"IEND", b""),
    ])
