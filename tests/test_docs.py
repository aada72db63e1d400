"""Docs stay true to the code: every hook is documented with its signature and tested."""

from __future__ import annotations

import re
from pathlib import Path

from companion_engine.plugins import PluginHost

REPO = Path(__file__).resolve().parents[1]


def hook_signatures() -> dict[str, str]:
    host = PluginHost()
    return {
        name: f"{name}({', '.join(getattr(host.pm.hook, name).spec.argnames)})"
        for name in dir(host.pm.hook) if not name.startswith("_")
    }


def test_every_hook_is_documented_with_its_signature() -> None:
    text = (REPO / "docs" / "plugins.md").read_text()
    headings = set(re.findall(r"^### (\w+\(.*\))$", text, re.MULTILINE))
    assert set(hook_signatures().values()) == headings


def test_every_hook_has_a_test() -> None:
    names = set()
    for path in (REPO / "tests").glob("test_*.py"):
        names |= set(re.findall(r"def test_hook_(\w+)", path.read_text()))
    missing = set(hook_signatures()) - names
    assert not missing, f"hooks without a test_hook_<name> test: {sorted(missing)}"
