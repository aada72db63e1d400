"""Lean when idle: a server whose models all run on the native client never imports LiteLLM.

Checked in a fresh interpreter (this test process has imported LiteLLM long ago): the
app starts, serves chat turns (stream and JSON), health, model listing, ``/openapi.json``
(whose model schema lists LiteLLM's providers) and a switch to another native model, and
LiteLLM is still not imported; switching to a model only
LiteLLM serves starts its import.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable

import pytest

from companion_engine import llm

SCRIPT = textwrap.dedent("""
    import asyncio, sys, tempfile
    from pathlib import Path
    from aiohttp.test_utils import TestClient, TestServer
    from companion_engine.app import create_app
    from companion_engine.configload import load_config
    from companion_engine.testing import LLMTestServer, Script, write_project

    async def main():
        llm = await LLMTestServer.start()
        root = Path(tempfile.mkdtemp())
        profile = {"llm": {"model": "openai/test-model", "api_base": llm.openai_base}}
        app = create_app(load_config(write_project(root, profile), env={}))
        async with TestClient(TestServer(app)) as client:
            llm.push(Script(tokens=["Hi", "."]))
            r = await client.post("/api/chat/stream", json={"message": "hi"})
            assert "event: done" in await r.text()
            llm.push(Script(tokens=["Hi", "."]))
            r = await client.post("/api/chat", json={"message": "hi", "model":
                                                     "ollama_chat/test-model"})
            assert r.status in (200, 503), r.status
            for path in ("/health", "/api/models", "/api/models/status", "/openapi.json"):
                assert (await client.get(path)).status == 200, path
            r = await client.post("/api/models/switch", json={"new_model": "ollama/other"})
            assert r.status == 200, await r.text()
            print("after native:", "litellm" in sys.modules)
            r = await client.post("/api/models/switch",  # a model only LiteLLM serves
                                  json={"new_model": "anthropic/claude-3-5-haiku-20241022"})
            assert r.status == 200, await r.text()
            for _ in range(600):  # the background import, started by the switch
                if "litellm" in sys.modules:
                    break
                await asyncio.sleep(0.05)
            print("after switch to a LiteLLM model:", "litellm" in sys.modules)
        await llm.close()

    asyncio.run(main())
""")


def test_litellm_is_imported_only_when_a_model_needs_it() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, env={"COMPANION_LOAD_PLUGINS": "",
                                           "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                           "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "after native: False" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "after switch to a LiteLLM model: True" in out.stdout, out.stdout


def test_litellm_providers_read_from_source_are_the_modules_list() -> None:
    """The providers read from LiteLLM's source are exactly ``litellm.provider_list``."""
    import litellm

    from_source = llm._providers_from_source()
    assert from_source, "LlmProviders was not found in LiteLLM's source"
    assert from_source == [str(getattr(p, "value", p)) for p in litellm.provider_list]
    assert {"openai", "anthropic", "ollama_chat", "groq"} <= set(from_source)


async def test_litellm_providers_fall_back_to_the_module(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """A LiteLLM whose source no longer holds the enum where it was: the module answers."""
    import litellm

    monkeypatch.setattr(llm, "_providers", None)
    monkeypatch.setattr(llm, "_PROVIDER_ENUM", llm.re.compile("^class NoSuchEnum"))
    assert llm._providers_from_source() is None
    monkeypatch.delitem(sys.modules, "litellm")  # as if not imported yet: try the source
    monkeypatch.setattr(llm, "get_litellm", _returns(litellm))
    assert await llm.litellm_providers() == [str(getattr(p, "value", p))
                                             for p in litellm.provider_list]


def _returns(module: object) -> Callable[[], Awaitable[object]]:
    """A stand-in for ``get_litellm`` that answers ``module``."""
    async def get() -> object:
        return module
    return get
