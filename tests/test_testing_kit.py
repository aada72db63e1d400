"""The plugin authors' test kit works as docs/plugins.md shows it."""

from __future__ import annotations

import gc
import threading

import pytest

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


FAILING_SETUP = """
from companion_engine import hookimpl
from companion_engine.stages import Sanitizer


class Broken(Sanitizer):
    name = "broken"

    async def setup(self, engine):
        raise RuntimeError("no such device")

    async def process(self, chunks, turn):
        async for chunk in chunks:
            yield chunk


@hookimpl
def register_sanitizers():
    return [Broken]
"""


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.is_alive() and "_connection_worker_thread" in t.name]


async def test_an_app_failing_its_start_up_is_closed(companion_client, llm_server, caplog) -> None:  # type: ignore[no-untyped-def]
    """A plugin whose stage fails ``setup()``: the test sees the error, and what the app had
    opened is closed (a store thread left running keeps pytest from exiting)."""
    before = store_threads()
    with pytest.raises(Exception, match="no such device"):
        await companion_client(
            profile={"llm": {"model": "openai/test", "api_base": llm_server.openai_base},
                     "output": ["broken"]},
            config={"store": {"url": "sqlite:///data/companion.db"}},
            plugin_files={"broken.py": FAILING_SETUP},
        )
    for thread in set(store_threads()) - set(before):
        thread.join(10)  # a closed connection's thread ends once it has read the stop
    assert store_threads() == before
    gc.collect()  # an HTTP session left open says so when it is collected
    assert "Unclosed" not in caplog.text
