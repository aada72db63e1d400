"""The plugin authors' test kit works as docs/plugins.md shows it."""

from __future__ import annotations

from companion_engine.testing import Script

SHOUT = """
from companion_engine import hookimpl
from companion_engine.stages import Sanitizer


class Shout(Sanitizer):
    name = "shout"

    async def process(self, chunks, turn):
        async for chunk in chunks:
            yield chunk.upper()


@hookimpl
def register_sanitizers():
    return [Shout]
"""


async def test_a_plugin_tested_through_the_real_engine(companion_client, llm_server) -> None:  # type: ignore[no-untyped-def]
    llm_server.push(Script(tokens=["Hello", " world", "."]))
    client = await companion_client(
        profile={"llm": {"model": "openai/test", "api_base": llm_server.openai_base},
                 "output": ["shout"]},
        plugin_files={"shout.py": SHOUT},
    )
    reply = await (await client.post("/api/chat", json={"message": "hi"})).json()
    assert reply["content"] == "HELLO WORLD."
    # The scripted server saw the real request LiteLLM sent.
    (request,) = llm_server.requests
    assert request.body["messages"][-1] == {"role": "user", "content": "hi"}
    assert request.completed
