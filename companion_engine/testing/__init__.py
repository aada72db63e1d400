"""Test kit for plugin authors: a real engine and a scripted LLM, in your own pytest suite.

Enable it in your ``conftest.py``::

    pytest_plugins = ["companion_engine.testing"]

and write tests against the real server::

    from companion_engine.testing import Script

    async def test_my_sanitizer(companion_client, llm_server):
        llm_server.push(Script(tokens=["Hello", " world", "."]))
        client = await companion_client(profile={
            "llm": {"model": "openai/test", "api_base": llm_server.openai_base},
            "output": ["my_sanitizer"],
        })
        reply = await (await client.post("/api/chat", json={"message": "hi"})).json()
        assert reply["content"] == "HELLO WORLD."

Fixtures: ``llm_server`` (an ``LLMTestServer`` speaking OpenAI streaming, Ollama
and OpenAI's ``/v1/audio/transcriptions`` over real HTTP, scripted per request),
``companion_config`` (writes a config folder and loads it) and
``companion_client`` (starts the app for it).
Your plugin is found as usual: installed (entry point) or a file in the config
folder's ``plugins/`` (``companion_config(plugin_files={"name.py": source})``).
"""

from __future__ import annotations

from companion_engine.testing.llmserver import (
    LLMTestServer,
    RecordedRequest,
    RecordedTranscription,
    Script,
    TranscriptScript,
    free_port,
)
from companion_engine.testing.project import TEST_PROFILE, write_project

__all__ = ["TEST_PROFILE", "LLMTestServer", "RecordedRequest", "RecordedTranscription",
           "Script", "TranscriptScript", "free_port", "write_project"]

# The fixtures, for ``pytest_plugins = ["companion_engine.testing"]``.
from companion_engine.testing.fixtures import (
    companion_client,
    companion_config,
    llm_server,
)

__all__ += ["companion_client", "companion_config", "llm_server"]
