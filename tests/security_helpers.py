"""A real server in a background thread, for synchronous clients (hypothesis, schemathesis).

Hypothesis and schemathesis drive requests synchronously; the app runs on its
own event loop in a thread, on a real socket, exactly as ``companion serve``
runs it. ``write_project`` lays out a config folder like ``make_config`` does,
for module-scoped servers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from companion_engine.config import AppConfig
from companion_engine.testing import LLMTestServer, free_port
from companion_engine.testing.project import TEST_PROFILE, write_yaml


def write_project(root: Path, profile: dict[str, Any] | None = None,
                  config: dict[str, Any] | None = None, *, llm_port: int | None = None
                  ) -> AppConfig:
    """A config folder under ``root`` (the ``make_config`` layout), loaded. With ``llm_port``
    the profile's model is the scripted LLM server that will listen there."""
    from companion_engine.configload import load_config

    prof = {**TEST_PROFILE, **(profile or {})}
    if llm_port is not None:
        prof["llm"] = {"model": "openai/test-model", "timeout_s": 5,
                       "api_base": f"http://127.0.0.1:{llm_port}/v1"}
    write_yaml(root / "profiles" / "default.yaml", prof)
    for sub in ("characters", "plugins", "data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_yaml(root / "companion.yaml", {"reload": False, **(config or {})})
    return load_config(root / "companion.yaml", env={})


class ThreadedServer:
    """``create_app(config)`` served on 127.0.0.1 from a thread with its own loop; with
    ``llm_port``, the scripted LLM server (``self.llm``) runs on that loop too."""

    def __init__(self, config: AppConfig, llm_port: int | None = None) -> None:
        self.config = config
        self.llm_port = llm_port
        self.llm: LLMTestServer | None = None
        self.loop = asyncio.new_event_loop()
        self.app: web.Application | None = None
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        from companion_engine.app import create_app

        self._stop = asyncio.Event()
        if self.llm_port is not None:
            self.llm = await LLMTestServer.start(self.llm_port)
        self.app = create_app(self.config)
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            if self.llm is not None:
                await self.llm.close()

    def start(self) -> ThreadedServer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def project_with_llm(root: Path, profile: dict[str, Any] | None = None,
                     config: dict[str, Any] | None = None) -> tuple[AppConfig, int]:
    """A project whose LLM is the scripted server on a port chosen now."""
    port = free_port()
    return write_project(root, profile, config, llm_port=port), port


@contextmanager
def threaded_server(config: AppConfig, llm_port: int | None = None
                    ) -> Iterator[ThreadedServer]:
    server = ThreadedServer(config, llm_port).start()
    try:
        yield server
    finally:
        server.stop()
