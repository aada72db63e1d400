"""PNG chunk reading and writing: CRCs, placement, placeholder images, SillyTavern's layout."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest

from companion_engine.cards import png
from companion_engine.cards.errors import CardError
from companion_engine.cards.export import png_bytes
from companion_engine.cards.formats import card_from_object
from tests.cards_helpers import card_png, chunk_text, v2
from tests.conftest import shared_card


def _verify_crcs(data: bytes) -> list[bytes]:
    """Independent walk: every CRC right, IEND last; returns the chunk types."""
    assert data[:8] == png.SIGNATURE
    pos, types = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + body) & 0xFFFFFFFF == crc
        types.append(ctype)
        pos += 12 + length
    assert pos == len(data) and types[-1] == b"IEND"
    return types


def test_placeholder_is_a_decodable_image() -> None:
    data = png.placeholder_png("Seraphina", size=16)
    chunks = png.read_chunks(data)
    assert [c.type for c in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0].data[:10])
    assert (width, height, depth, colour) == (16, 16, 8, 2)
    raw = zlib.decompress(chunks[1].data)
    assert len(raw) == height * (1 + width * 3)
    assert png.placeholder_png("Seraphina", 16) == data
    assert png.placeholder_png("Other", 16) != data


def test_export_writes_chara_then_ccv3_before_iend_like_sillytavern() -> None:
    c = card_from_object(v2("Layout")).character
    data = png_bytes(c)
    types = _verify_crcs(data)
    assert types[-3:] == [b"tEXt", b"tEXt", b"IEND"]
    texts = dict(t for ch in png.read_chunks(data) if (t := ch.text()))
    chara = json.loads(base64.b64decode(texts["chara"]))
    ccv3 = json.loads(base64.b64decode(texts["ccv3"]))
    assert (chara["spec"], chara["spec_version"]) == ("chara_card_v2", "2.0")
    assert (ccv3["spec"], ccv3["spec_version"]) == ("chara_card_v3", "3.0")
    assert chara["data"] == ccv3["data"]
    assert chara["name"] == chara["data"]["name"] == "Layout"  # V1 readers see the name too


def test_embedding_replaces_old_card_chunks_and_keeps_the_image() -> None:
    original = shared_card("megumin.v1.png").read_bytes()
    c = card_from_object(v2("Replaced")).character
    data = png_bytes(c, original)
    _verify_crcs(data)
    before = [ch for ch in png.read_chunks(original) if ch.type != b"tEXt"]
    after = png.read_chunks(data)
    assert [ch for ch in after if ch.type != b"tEXt"] == before
    keywords = [t[0] for ch in after if (t := ch.text())]
    assert keywords == ["chara", "ccv3"]


def test_card_keyword_match_is_case_insensitive_and_first_wins() -> None:
    data = card_png(("CHARA", "first"), ("chara", "second"), ("ccv3", "v3"))
    assert png.card_texts(png.read_chunks(data)) == [("ccv3", "v3"), ("chara", "first")]


def test_text_chunk_without_separator_is_ignored() -> None:
    chunk = png.Chunk(b"tEXt", b"charanoseparator")
    assert chunk.text() is None


def test_trailing_bytes_after_iend_are_ignored() -> None:
    data = card_png(("chara", chunk_text(v2()))) + b"garbage"
    assert png.read_chunks(data)[-1].type == b"IEND"


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda d: d[:8] + struct.pack(">I", 0x80000000) + d[12:], "declares"),
    (lambda d: d[:12] + b"I\x00DR" + d[16:], "invalid chunk type"),
    (lambda d: b"\x89PNX" + d[4:], "signature"),
    (lambda d: d[:-12], "before the IEND"),
])
def test_damaged_files(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    data = card_png(("chara", chunk_text(v2())))
    with pytest.raises(CardError, match=message) as info:
        png.read_chunks(mangle(data))
    assert info.value.status == 400


def test_chunk_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png, "MAX_CHUNKS", 10)
    base = png.read_chunks(png.placeholder_png("x", 4))
    many = png.encode([base[0], *[png.Chunk(b"teXt", b"")] * 20, *base[1:]])
    with pytest.raises(CardError, match="more than 10 chunks"):
        png.read_chunks(many)
