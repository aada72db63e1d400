"""The pytest fixtures of ``companion_engine.testing``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from companion_engine.config import AppConfig
from companion_engine.testing.llmserver import LLMTestServer
from companion_engine.testing.project import write_project


@pytest_asyncio.fixture
async def llm_server() -> AsyncIterator[LLMTestServer]:
    """A running scripted LLM server, closed after the test."""
    server = await LLMTestServer.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def companion_config(tmp_path: Path) -> Callable[..., AppConfig]:
    """``companion_config(profile=, config=, plugin_files=, env=)`` -> a loaded ``AppConfig``."""
    from companion_engine.configload import load_config

    def make(profile: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
             plugin_files: dict[str, str] | None = None, *, root: Path | None = None,
             env: dict[str, str] | None = None) -> AppConfig:
        file = write_project(root or tmp_path, profile, config, plugin_files)
        return load_config(file, env=env if env is not None else {})

    return make


@pytest_asyncio.fixture
async def companion_client(
    companion_config: Callable[..., AppConfig],
) -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
    """Start the real app for a config (or ``companion_config(**kwargs)``); return a client.

    ``plugins=[module, ...]`` loads those plugin modules (your package, uninstalled) with the
    built-ins and the config's ``plugins/`` files, and no other installed plugin. Every
    client is closed after the test, and one whose app failed its start-up at once (with
    what that app had opened: its store, its HTTP session).
    """
    from companion_engine.app import create_app
    from companion_engine.plugins import PluginHost

    clients: list[TestClient] = []

    async def make(app_config: AppConfig | None = None, /, *,
                   plugins: Sequence[ModuleType] | None = None, **kwargs: Any) -> TestClient:
        cfg = app_config if app_config is not None else companion_config(**kwargs)
        host = None
        if plugins is not None:
            host = PluginHost.load(cfg.path("plugins"), entry_points=False,
                                   extra=[(m.__name__, m) for m in plugins])
        client: TestClient = TestClient(TestServer(create_app(cfg, plugins=host)))
        try:
            await client.start_server()
        except BaseException:
            await client.close()
            raise
        clients.append(client)
        return client

    yield make
    while clients:
        await clients.pop().close()
