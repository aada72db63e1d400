"""Character ids: slugs, uniqueness and paths that can never leave the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from companion_engine.cards.ids import (
    MAX_ID_LENGTH,
    RESERVED,
    is_valid_id,
    path_in,
    slugify,
    unique_id,
)


@pytest.mark.parametrize(("text", "slug"), [
    ("Seraphina", "seraphina"),
    ("megumin.v1", "megumin-v1"),
    ("Zoë  the Great!", "zoe-the-great"),
    ("..//etc/passwd", "etc-passwd"),
    ("_hidden", "hidden"),
    ("アクア", ""),
    ("ｓｅｒａ", "sera"),  # fullwidth folds to ASCII
    ("x" * 100, "x" * MAX_ID_LENGTH),
    ("", ""),
])
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug


@given(st.text(max_size=200))
def test_slugify_gives_a_valid_id_or_nothing(text: str) -> None:
    slug = slugify(text)
    assert slug == "" or is_valid_id(slug) or slug in RESERVED


@pytest.mark.parametrize("value", [
    "", "..", "a/b", "a\x00", "abc\n", "-abc", "_abc", "ABC", "a.b", "ｓｅｒａ", "é", "a" * 65,
    "%2e%2e", None, 5, "upload",
])
def test_invalid_ids(value: object) -> None:
    assert not is_valid_id(value)


def test_unique_id_suffixes_and_falls_back() -> None:
    taken = {"sera", "sera-2"}
    assert unique_id(["Sera"], taken.__contains__) == "sera-3"
    assert unique_id(["アクア", "aqua"], taken.__contains__) == "aqua"
    assert unique_id(["アクア"], taken.__contains__) == "character"
    assert unique_id(["Upload"], taken.__contains__) == "upload-2"  # the upload route's name
    long = "y" * 64
    got = unique_id([long], {long}.__contains__)
    assert got == "y" * 62 + "-2" and is_valid_id(got)


def test_path_in_refuses_escapes(tmp_path: Path) -> None:
    folder = tmp_path / "characters"
    folder.mkdir()
    (tmp_path / "secret.json").write_text("{}")
    os.symlink(tmp_path / "secret.json", folder / "link.json")
    assert path_in(folder, "ok.json") == (folder / "ok.json").resolve()
    for name in ["../secret.json", "..", ".", "", "a/b.json", "/etc/passwd", "x\x00.json",
                 "link.json"]:
        with pytest.raises(ValueError):
            path_in(folder, name)
