"""The character store over a real folder and a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from companion_engine.cards.errors import CardError
from companion_engine.cards.export import card_data
from companion_engine.cards.formats import card_from_object, parse_card
from companion_engine.cards.model import Character
from companion_engine.cards.store import CharacterStore
from companion_engine.cards.update import apply_patch
from companion_engine.store import Store, open_store
from tests.cards_helpers import card_files, same_card, snapshot, v2
from tests.conftest import shared_card
from tests.shipped import shipped_copy


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store("sqlite:///data/test.db", tmp_path)
    yield store
    await store.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "characters"
    path.mkdir()
    return path


def write_card(folder: Path, name: str, card: dict | None = None) -> Path:  # type: ignore[type-arg]
    path = folder / name
    path.write_text(json.dumps(card or v2(Path(name).stem.title())), encoding="utf-8")
    return path


async def test_loads_every_real_card_with_ids_from_file_names(folder: Path, db: Store,
                                                             cards_dir: Path) -> None:
    for path in card_files():
        shutil.copy(path, folder / path.name)
    shipped_copy("characters/aria.yaml", folder / "aria.yaml")
    store = CharacterStore(folder, db)
    await store.load()
    ids = {c.id for c in store.list()}
    assert ids == {"amy-v3-ccv3", "aqua-v1-chara", "megumin-v1-chara", "megumin-v1",
                   "sakana-v2-chara", "seraphina-v2-chara", "tavern_kit-full_v2_card",
                   "tavern_kit-full_v3_card", "tavern_kit-with_lorebook", "aria"}
    assert store.problems == []
    for c in store.list():
        assert c.source_file and (folder / c.source_file).is_file()
        assert store.get(c.id) is c
    assert store.get("aria").source_format == "yaml"  # type: ignore[union-attr]


async def test_broken_and_foreign_files_are_problems_not_cards(folder: Path, db: Store,
                                                               tmp_path: Path) -> None:
    write_card(folder, "good.json")
    (folder / "broken.json").write_text('{"name": ', encoding="utf-8")
    (folder / "nocard.png").write_bytes(shared_card("megumin.v1.png").read_bytes()[:5000])
    (folder / "bad.yaml").write_text("name: [x\n", encoding="utf-8")
    (folder / "notes.txt").write_text("ignored", encoding="utf-8")
    (folder / ".hidden.json").write_text("{}", encoding="utf-8")
    outside = write_card(tmp_path, "outside.json")
    os.symlink(outside, folder / "escape.json")
    store = CharacterStore(folder, db)
    await store.load()
    assert [c.id for c in store.list()] == ["good"]
    by_file = {Path(p.file).name: p for p in store.problems}
    assert set(by_file) == {"broken.json", "nocard.png", "bad.yaml", "escape.json"}
    assert by_file["broken.json"].line == 1 and "not valid JSON" in by_file["broken.json"].message
    assert "truncated" in by_file["nocard.png"].message
    assert by_file["bad.yaml"].line == 2
    assert "outside" in by_file["escape.json"].message


async def test_rescan_reports_changes_and_replaces_changed_objects(folder: Path,
                                                                   db: Store) -> None:
    write_card(folder, "a.json")
    write_card(folder, "b.json")
    store = CharacterStore(folder, db)
    await store.load()
    a, b = store.get("a"), store.get("b")
    assert await store.rescan() == set()
    assert store.get("a") is a

    write_card(folder, "a.json", v2("Changed"))
    os.utime(folder / "a.json", ns=(1, 1))  # a different signature even on coarse clocks
    (folder / "b.json").unlink()
    write_card(folder, "c.json")
    assert await store.rescan() == {"a", "b", "c"}
    assert store.get("a") is not a and store.get("a").name == "Changed"  # type: ignore[union-attr]
    assert store.get("b") is None and b is not None

    (folder / "a.json").write_text("{oops", encoding="utf-8")
    assert await store.rescan() == {"a"}
    assert store.get("a") is None and len(store.problems) == 1
    write_card(folder, "a.json", v2("Fixed"))
    assert await store.rescan() == {"a"}
    assert store.get("a").name == "Fixed" and store.problems == []  # type: ignore[union-attr]


async def test_ids_are_unique_and_stable(folder: Path, db: Store) -> None:
    write_card(folder, "sera.json")
    write_card(folder, "sera.png_is_not.json", v2("x"))
    store = CharacterStore(folder, db)
    await store.load()
    (folder / "Sera.yaml").write_text("name: Other Sera\n", encoding="utf-8")
    await store.rescan()
    assert store.get("sera").source_file == "sera.json"  # type: ignore[union-attr]
    assert store.get("sera-2").source_file == "Sera.yaml"  # type: ignore[union-attr]


async def test_active_character_persists_and_falls_back(folder: Path, db: Store) -> None:
    write_card(folder, "a.json")
    write_card(folder, "b.json")
    store = CharacterStore(folder, db, default_id="a")
    await store.load()
    assert store.active_id == "a"
    await store.set_active("b")
    with pytest.raises(KeyError):
        await store.set_active("nope")

    again = CharacterStore(folder, db, default_id="a")
    await again.load()
    assert again.active_id == "b" and again.active() is again.get("b")
    assert await again.delete("b")
    assert again.active_id == "a"
    assert await db.get_setting("active_character") is None
    nothing = CharacterStore(folder, db, default_id="missing")
    await nothing.load()
    assert nothing.active_id is None and nothing.active() is None


async def test_add_writes_atomically_with_a_slug_id(folder: Path, db: Store) -> None:
    write_card(folder, "seraphina.json")
    store = CharacterStore(folder, db)
    await store.load()
    card = await store.add(card_from_object(v2("Seraphina")))
    assert card.character.id == "seraphina-2"
    assert card.path == (folder / "seraphina-2.json").resolve()
    assert same_card(parse_card(card.path.read_bytes()).character, card.character)
    assert not [name for name in snapshot(folder) if name.startswith(".")]
    assert await store.rescan() == set()  # our own write is not a change

    raw = shared_card("megumin.v1.png").read_bytes()
    up = await store.add(parse_card(raw), raw=raw, name_hint="whatever.png")
    assert up.path.name == "megumin.png" and up.path.read_bytes() == raw
    nameless = await store.add(card_from_object(v2("アクア")), name_hint="../../aqua.json")
    assert nameless.character.id == "aqua"


async def test_new_ids_avoid_names_of_broken_files(folder: Path, db: Store) -> None:
    (folder / "nova.json").write_text("{broken", encoding="utf-8")
    store = CharacterStore(folder, db)
    await store.load()
    card = await store.add(card_from_object(v2("Nova")))
    assert card.character.id == "nova-2"
    assert (folder / "nova.json").read_text() == "{broken"


def _patch(fields: dict) -> object:  # type: ignore[type-arg]
    return lambda c: apply_patch(c, fields)


@pytest.mark.parametrize("source", ["seraphina.v2.chara.json", "megumin.v1.png",
                                    "tavern_kit.full_v3_card.json"])
async def test_update_keeps_format_and_everything_else(folder: Path, db: Store,
                                                       source: str) -> None:
    shutil.copy(shared_card(source), folder / source)
    store = CharacterStore(folder, db)
    await store.load()
    (before,) = store.files()
    updated = await store.update(before.character.id, _patch({"description": "New text."}))
    assert updated.character.description == "New text."
    assert updated.character is not before.character
    reread = parse_card(updated.path.read_bytes())
    assert reread.container == before.container
    want = card_data(before.character) | {"description": "New text."}
    assert card_data(reread.character) == want
    if before.container == "png":  # the image is kept
        from companion_engine.cards import png
        old = [c for c in png.read_chunks(shared_card(source).read_bytes()) if c.type == b"IDAT"]
        assert [c for c in png.read_chunks(updated.path.read_bytes())
                if c.type == b"IDAT"] == old


async def test_update_of_yaml_card_writes_yaml(folder: Path, db: Store) -> None:
    shipped_copy("characters/aria.yaml", folder / "aria.yaml")
    store = CharacterStore(folder, db)
    await store.load()
    await store.update("aria", _patch({"tags": ["x"]}))
    text = (folder / "aria.yaml").read_text(encoding="utf-8")
    assert text.startswith("name: Aria\n") and "- x\n" in text
    again = CharacterStore(folder, db)
    await again.load()
    assert again.get("aria").tags == ["x"]  # type: ignore[union-attr]
    assert again.get("aria").source_format == "yaml"  # type: ignore[union-attr]


async def test_failed_update_changes_nothing(folder: Path, db: Store) -> None:
    write_card(folder, "a.json")
    store = CharacterStore(folder, db)
    await store.load()
    before, files = store.get("a"), snapshot(folder)
    for bad in ({"name": ""}, {"name": None}, {"tags": [{}]}, {"nmae": "typo"},
                {"character_book": {"entries": [{"keys": 1}]}}):
        with pytest.raises(CardError):
            await store.update("a", _patch(bad))
    assert store.get("a") is before and snapshot(folder) == files
    with pytest.raises(KeyError):
        await store.update("zzz", _patch({"name": "x"}))


async def test_concurrent_updates_do_not_lose_edits(folder: Path, db: Store) -> None:
    write_card(folder, "a.json")
    store = CharacterStore(folder, db)
    await store.load()
    await asyncio.gather(*(
        store.update("a", _patch({"extensions": {f"k{i}": i}})) for i in range(10)))
    c = store.get("a")
    assert c is not None and {f"k{i}" for i in range(10)} <= c.extensions.keys()
    fresh = parse_card((folder / "a.json").read_bytes()).character
    assert fresh.extensions == c.extensions


async def test_delete_removes_the_file(folder: Path, db: Store) -> None:
    write_card(folder, "a.json")
    store = CharacterStore(folder, db)
    await store.load()
    assert await store.delete("a") and not (folder / "a.json").exists()
    assert not await store.delete("a")
    assert await store.rescan() == set()


async def test_export_of_png_keeps_image_and_placeholder_otherwise(folder: Path,
                                                                   db: Store) -> None:
    shutil.copy(shared_card("megumin.v1.png"), folder / "megumin.png")
    write_card(folder, "a.json")
    store = CharacterStore(folder, db)
    await store.load()
    from companion_engine.cards import png
    out = await store.export("megumin", "png")
    idat = [c for c in png.read_chunks(out) if c.type == b"IDAT"]
    assert len(idat) == 9
    out = await store.export("a", "png")
    assert [c.type for c in png.read_chunks(out) if c.type != b"tEXt"] == \
           [b"IHDR", b"IDAT", b"IEND"]
    assert isinstance(parse_card(out).character, Character)
    assert json.loads(await store.export("a", "json"))["spec"] == "chara_card_v2"


async def test_missing_folder_is_empty_and_created_on_first_write(tmp_path: Path,
                                                                  db: Store) -> None:
    store = CharacterStore(tmp_path / "nope", db)
    await store.load()
    assert store.list() == []
    await store.add(card_from_object(v2("First")))
    assert (tmp_path / "nope" / "first.json").is_file()


async def test_problems_read_as_file_line_path_message(folder: Path, db: Store) -> None:
    (folder / "nameless.yaml").write_text("description: x\nname: ''\n", encoding="utf-8")
    store = CharacterStore(folder, db)
    await store.load()
    (problem,) = store.problems
    assert str(problem) == f"{folder / 'nameless.yaml'}:2: name: is empty"


async def test_add_never_overwrites_a_file_placed_since_the_last_scan(folder: Path,
                                                                       db: Store) -> None:
    store = CharacterStore(folder, db)
    await store.load()
    write_card(folder, "Nova.png.json")
    (folder / "nova.json").write_text("hand-made, not scanned yet", encoding="utf-8")
    card = await store.add(card_from_object(v2("Nova")))
    assert card.character.id == "nova-2"
    assert (folder / "nova.json").read_text(encoding="utf-8") == "hand-made, not scanned yet"
