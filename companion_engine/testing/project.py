"""A throwaway config folder: companion.yaml, a profile, and optional plugin files."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

#: A profile that needs nothing outside the test: no LLM reachable, text-only speech.
TEST_PROFILE: dict[str, Any] = {
    "llm": {"model": "openai/test-model", "api_base": "http://127.0.0.1:9/v1", "timeout_s": 5},
    "speech": {"enabled": False, "tts": "none"},
}


def write_yaml(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_project(
    root: Path,
    profile: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    plugin_files: dict[str, str] | None = None,
) -> Path:
    """Write ``companion.yaml`` and ``profiles/default.yaml`` under ``root``; return the file.

    ``profile`` and ``config`` are merged over ``TEST_PROFILE`` and ``{reload: false}``.
    """
    write_yaml(root / "profiles" / "default.yaml", {**TEST_PROFILE, **(profile or {})})
    for sub in ("characters", "plugins", "data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, source in (plugin_files or {}).items():
        (root / "plugins" / name).write_text(textwrap.dedent(source), encoding="utf-8")
    return write_yaml(root / "companion.yaml", {"reload": False, **(config or {})})
