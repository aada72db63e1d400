"""Helpers shared by the card tests: build card files and snapshot a folder."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from companion_engine.cards import png
from companion_engine.cards.export import card_data
from companion_engine.cards.model import Character
from tests.conftest import CARDS, SHARED_MISSING

#: Files in ../shared/research/cards that are character cards (the rest are not).
NOT_CARDS = {"SHA256SUMS", "eldoria.st-worldinfo.json"}


def card_files() -> list[Path]:
    """The real public card files, in a test's body; skips the test without ../shared."""
    if not CARDS.is_dir():
        pytest.skip(SHARED_MISSING)
    return sorted(p for p in CARDS.iterdir() if p.name not in NOT_CARDS)


def card_params() -> list[Any]:
    """The real public card files for ``parametrize``; one skipped placeholder without them."""
    if not CARDS.is_dir():
        return [pytest.param(CARDS / "absent", marks=pytest.mark.skip(reason=SHARED_MISSING))]
    return card_files()


def v2(name: str = "Tester", **fields: Any) -> dict[str, Any]:
    """A small valid V2 card."""
    data = {"name": name, "description": f"{name} tests things.", "personality": "careful",
            "scenario": "", "first_mes": "Hello, I am {{char}}, {{user}}.",
            "mes_example": "<START>\n{{user}}: hi\n{{char}}: hello", **fields}
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def chunk_text(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode("utf-8")).decode("ascii")


def card_png(*texts: tuple[str, str], image: bytes | None = None,
             before_idat: bool = False) -> bytes:
    """A PNG carrying ``texts`` as tEXt chunks, after the image data or right after IHDR."""
    base = png.read_chunks(image or png.placeholder_png("test", size=8))
    new = [png.Chunk(b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1"))
           for k, v in texts]
    if before_idat:
        chunks = [base[0], *new, *base[1:]]
    else:
        chunks = [*base[:-1], *new, base[-1]]
    return png.encode(chunks)


def same_card(a: Character, b: Character) -> bool:
    """Equal as cards: every data field (unknown ones included) and the root extras."""
    return card_data(a) == card_data(b) and a.root_extra == b.root_extra


def contains(got: Any, want: Any) -> bool:
    """``got`` has everything ``want`` has (objects may have more keys, e.g. spec defaults)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and contains(got[k], v)
                                              for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(
            contains(g, w) for g, w in zip(got, want, strict=True))
    return bool(got == want)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a folder (hidden temp files included) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
