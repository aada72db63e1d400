"""Write pixel.v2.png: a small PNG card with V2 in ``chara`` and V3 in ``ccv3``.

Run from the repository root: ``.venv/bin/python tests/data/cards/make_png.py``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from companion_engine.cards import png

HERE = Path(__file__).parent
DATA = {
    "name": "Pixel",
    "description": "{{char}} is a retro game cartridge that became self-aware.",
    "personality": "bubbly, nostalgic",
    "scenario": "{{user}} blows the dust off {{char}}'s contacts.",
    "first_mes": "Player one, {{user}}! Press start!",
    "mes_example": "<START>\n{{user}}: What's your high score?\n{{char}}: 999,999. Obviously.",
    "creator_notes": "Written for Companion Engine's tests.",
    "system_prompt": "",
    "post_history_instructions": "",
    "alternate_greetings": [],
    "tags": ["test", "png"],
    "creator": "Companion Engine",
    "character_version": "1.0",
    "extensions": {},
    "character_book": {"extensions": {}, "entries": [
        {"keys": ["cartridge"], "content": "Pixel's label is faded orange.", "extensions": {},
         "enabled": True, "insertion_order": 10, "constant": False}]},
}


def text(card: dict[str, object]) -> str:
    return base64.b64encode(json.dumps(card).encode("utf-8")).decode("ascii")


def main() -> None:
    v2 = {"spec": "chara_card_v2", "spec_version": "2.0", "data": DATA}
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0",
          "data": {**DATA, "group_only_greetings": [], "nickname": "Pix"}}
    image = png.placeholder_png("pixel", size=16)
    (HERE / "pixel.v2.png").write_bytes(png.embed_texts(image, [("chara", text(v2)),
                                                                ("ccv3", text(v3))]))


if __name__ == "__main__":
    main()
