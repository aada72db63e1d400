"""Shared fixtures: a config folder in a temp dir and a running app for it.

``make_config(profile={...}, config={...})`` writes ``companion.yaml`` and
``profiles/default.yaml`` under a fresh temp dir and returns the loaded
``AppConfig``. ``make_client(config)`` starts the real app on a real socket
(pytest-aiohttp's ``aiohttp_client``) and returns the test client.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# Third-party plugins installed in the test environment must not change results.
os.environ.setdefault("COMPANION_LOAD_PLUGINS", "")

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from hypothesis import settings

from companion_engine.config import AppConfig

# Wall-clock deadlines make property tests flaky on a loaded 2-core machine; what matters
# is the property, and speed is measured by the benchmarks.
settings.register_profile("companion", deadline=None, print_blob=True)
settings.load_profile("companion")

REPO = Path(__file__).resolve().parents[1]
#: The team's shared folder sits beside the repository (CI lays it there too);
#: COMPANION_SHARED_DIR points elsewhere when it does not.
SHARED = Path(os.environ.get("COMPANION_SHARED_DIR", REPO.parent / "shared"))
CARDS = SHARED / "research" / "cards"

#: A profile that needs nothing outside the test: no LLM reachable, text-only speech.
TEST_PROFILE: dict[str, Any] = {
    "llm": {"model": "openai/test-model", "api_base": "http://127.0.0.1:9/v1", "timeout_s": 5},
    "speech": {"enabled": False, "tts": "none"},
}


def write_yaml(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


MakeConfig = Callable[..., AppConfig]


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    """Write a config folder and load it. ``profile``/``config`` are merged over the defaults."""
    from companion_engine.configload import load_config

    def make(
        profile: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        *,
        root: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> AppConfig:
        base = root or tmp_path
        prof = {**TEST_PROFILE, **(profile or {})}
        write_yaml(base / "profiles" / "default.yaml", prof)
        for sub in ("characters", "plugins", "data"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        write_yaml(base / "companion.yaml", {"reload": False, **(config or {})})
        return load_config(base / "companion.yaml", env=env if env is not None else {})

    return make


MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[TestClient]], make_config: MakeConfig
) -> MakeClient:
    """Start the real app for a config (or for ``make_config(**kwargs)``) and return a client."""
    from companion_engine.app import create_app

    async def make(app_config: AppConfig | None = None, /, **kwargs: Any) -> TestClient:
        cfg = app_config if app_config is not None else make_config(**kwargs)
        return await aiohttp_client(create_app(cfg))

    return make


@pytest.fixture
def cards_dir() -> Path:
    """The real public cards in ../shared/research/cards (read-only)."""
    if not CARDS.is_dir():
        pytest.skip(f"{CARDS} not found")
    return CARDS
