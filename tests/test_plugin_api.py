"""The Plugin API 1.0 contracts, exercised the way a third-party plugin uses them.

Each plugin here is a local plugin file written only against the package root
(``from companion_engine import ...``), run by the real server against the
scripted LLM over real HTTP.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import companion_engine
from companion_engine.testing import LLMTestServer, Script
from tests.chat_helpers import chat_events, llm_profile, names, streamed_text
from tests.conftest import REPO, MakeClient

SILENT = {"splitter": "sentence", "cleaners": [], "tts": "api_tts"}

API_PLUGIN = '''
import asyncio
from companion_engine import (Audio, PromptBuilder, Sanitizer, StageOptions, TTSBackend,
                              UnknownVoiceError, hookimpl)

EVENTS = []


def explode(text):
    raise ValueError(f"cannot handle {text!r}")


class Explode(Sanitizer):
    """Fails in a module-level helper (no `self` on the failing frame)."""
    name = "api_explode"

    async def process(self, chunks, turn):
        async for chunk in chunks:
            yield explode(chunk)


class StopAtBang(Sanitizer):
    """Ends the reply at the first '!' with its own finish reason."""
    name = "api_stop"

    async def process(self, chunks, turn):
        async for chunk in chunks:
            if "!" in chunk:
                yield chunk[:chunk.index("!") + 1]
                turn.stop("bang")
                continue  # keeps reading: the runner must stop pulling anyway
            yield chunk


class MyHistory(PromptBuilder):
    """A replacement history builder: the conversation, then the user's own message."""
    name = "api_history"

    async def build(self, turn):
        turn.messages.extend(turn.history)
        turn.messages.append(turn.user_entry)


class BrokenBuilder(PromptBuilder):
    name = "api_broken"

    async def build(self, turn):
        explode(turn.user_message)


class RecordingTTS(TTSBackend):
    """Says which voice it was asked for; knows two voices; counts its lifecycle."""
    name = "api_tts"

    class Options(StageOptions):
        voice: str = "alto"

    async def setup(self, engine):
        EVENTS.append(("setup", engine.http is not None))

    async def aclose(self):
        EVENTS.append(("aclose", None))

    async def synthesize(self, text, turn):
        voice = turn.voice or self.options.voice
        if voice not in ("alto", "bass"):
            raise UnknownVoiceError(f"no voice {voice!r} here")
        if voice == "bass" and "boom" in text:
            raise RuntimeError("speaker blew")
        EVENTS.append(("spoke", voice))
        return Audio(data=b"RIFF", format="wav", sample_rate=8000, duration_ms=10)

    async def voices(self):
        return [{"name": "alto"}, {"name": "bass"}]


@hookimpl
def register_sanitizers():
    return [Explode, StopAtBang]


@hookimpl
def register_prompt_builders():
    return [MyHistory, BrokenBuilder]


@hookimpl
def register_tts_backends():
    return [RecordingTTS]
'''


def plugin_module() -> Any:
    return sys.modules["companion_local_plugins.apiplugin"]


async def client_for(make_client: MakeClient, server: LLMTestServer, **profile: Any) -> Any:
    return await make_client(profile={**llm_profile(server), **profile},
                             plugin_files={"apiplugin.py": API_PLUGIN})


def test_package_root_exports_the_plugin_author_surface() -> None:
    for name in ("hookimpl", "Audio", "Turn", "TurnResult", "Message", "PromptBuilder",
                 "LorebookInjector", "Sanitizer", "SentenceSplitter", "TTSBackend",
                 "StageOptions", "StageError", "UnknownVoiceError", "ApiError", "ConfigError",
                 "__version__", "api_version"):
        assert hasattr(companion_engine, name), name
        assert name in companion_engine.__all__
    assert companion_engine.api_version.startswith("1.")


def test_core_modules_never_import_builtin() -> None:
    """Layering: built-ins are ordinary plugins; the core knows them only by name."""
    offenders = []
    package = REPO / "companion_engine"
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        if rel.parts[0] == "builtin":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{rel}: {m}" for m in mods
                          if m == "companion_engine.builtin"
                          or m.startswith("companion_engine.builtin.")]
    assert offenders == []


#: The server's own machinery: not plugin API, so neither built-ins nor third parties import it.
INTERNAL = ("chat", "routes", "app", "reload", "plugins", "plugin_probe", "pipeline",
            "security", "middlewares", "cli", "checks", "configload", "__main__")


def test_builtin_plugins_import_only_what_a_third_party_may() -> None:
    """The built-ins use the same public API a third-party plugin has (docs/plugins.md)."""
    offenders = []
    for path in (REPO / "companion_engine" / "builtin").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for mod in mods:
                parts = mod.split(".")
                if parts[0] == "companion_engine" and len(parts) > 1 and parts[1] in INTERNAL:
                    offenders.append(f"{path.name}: {mod}")
    assert offenders == []


async def test_stop_ends_the_reply_with_the_stages_reason(make_client: MakeClient,
                                                          llm_server: LLMTestServer) -> None:
    llm_server.push(Script(tokens=["Hey", " you!", " more", " text", " never", " sent."],
                           delay_s=0.2))
    client = await client_for(make_client, llm_server, output=["api_stop"],
                              speech={**SILENT, "enabled": False})
    events = await chat_events(client, {"message": "hi"})
    assert names(events)[-1] == "done"
    done = events[-1][1]
    assert done["finish_reason"] == "bang"
    assert streamed_text(events) == "Hey you!" == done["full_content"]
    request = llm_server.requests[-1]
    await request.wait_closed(5)
    assert not request.completed  # the provider's stream was closed early


async def test_stage_failure_names_the_stage_and_its_plugin(make_client: MakeClient,
                                                            llm_server: LLMTestServer) -> None:
    llm_server.push(Script(tokens=["one", " two"]))
    client = await client_for(make_client, llm_server, output=["api_explode"],
                              speech={**SILENT, "enabled": False})
    events = await chat_events(client, {"message": "hi"})
    assert names(events) == ["provider_connected", "error"]
    error = events[-1][1]
    assert error["type"] == "stage_error"
    assert "'api_explode'" in error["error"] and "apiplugin" in error["error"]
    assert "cannot handle 'one'" in error["error"]


async def test_replacement_history_builder_gets_the_user_message_once(
        make_client: MakeClient, llm_server: LLMTestServer) -> None:
    client = await client_for(make_client, llm_server, prompt=["system_prompt", "api_history"],
                              speech={**SILENT, "enabled": False})
    history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"},
               {"role": "user", "content": "second"}]
    resp = await client.post("/api/prompt/preview", json={"messages": history})
    assert resp.status == 200, await resp.text()
    sent = [(m["role"], m["content"]) for m in (await resp.json())["messages"]]
    assert sent[1:] == [("user", "first"), ("assistant", "reply"), ("user", "second")]
    await chat_events(client, {"messages": history})
    body = llm_server.requests[-1].body
    assert [m["content"] for m in body["messages"]].count("second") == 1


async def test_tts_backend_gets_the_requested_voice_and_setup_aclose(
        make_client: MakeClient, llm_server: LLMTestServer) -> None:
    llm_server.push(Script(tokens=["Hello there, friend.", " All good here."]))
    client = await client_for(make_client, llm_server, speech=SILENT)
    module = plugin_module()
    assert ("setup", True) in module.EVENTS
    events = await chat_events(client, {"message": "hi", "voice": "bass"})
    assert names(events).count("audio_ready") == 2
    assert [e for e in module.EVENTS if e[0] == "spoke"] == [("spoke", "bass")] * 2
    # The default voice when the request names none.
    llm_server.push(Script(tokens=["Once more, with feeling."]))
    await chat_events(client, {"message": "again"})
    assert module.EVENTS[-1] == ("spoke", "alto")
    # An unknown voice: the text goes on, each sentence gets audio_error naming the stage.
    llm_server.push(Script(tokens=["Third time now."]))
    events = await chat_events(client, {"message": "x", "voice": "tenor"})
    assert names(events)[-1] == "done"
    errors = [d for n, d in events if n == "audio_error"]
    assert errors and "no voice 'tenor'" in errors[0]["error"]
    assert "'api_tts'" in errors[0]["error"]
    # /api/tts maps UnknownVoiceError to 422 for any backend, and lists voices.
    resp = await client.post("/api/tts", json={"text": "Hi there.", "voice": "tenor"})
    assert resp.status == 422 and "no voice 'tenor'" in (await resp.json())["error"]
    voices = await (await client.get("/api/tts/voices")).json()
    assert voices["backend"] == "api_tts" and voices["speaks"] is True
    # A failing synthesis is blamed on the stage too.
    llm_server.push(Script(tokens=["A big boom happened."]))
    events = await chat_events(client, {"message": "y", "voice": "bass"})
    errors = [d for n, d in events if n == "audio_error"]
    assert errors and "speaker blew" in errors[0]["error"] and "api_tts" in errors[0]["error"]


async def test_stage_setup_failure_rejects_the_profile(make_config: Any,
                                                       tmp_path: Path) -> None:
    from aiohttp import web

    from companion_engine.app import create_app
    from companion_engine.errors import ConfigError

    failing = API_PLUGIN.replace('EVENTS.append(("setup", engine.http is not None))',
                                 'raise OSError("model file missing")')
    config = make_config(profile={"speech": SILENT}, plugin_files={"apiplugin.py": failing})
    runner = web.AppRunner(create_app(config))
    try:
        await runner.setup()
    except ConfigError as exc:
        assert "'api_tts'" in str(exc) and "model file missing" in str(exc)
    else:
        raise AssertionError("setup() failure must reject the profile")
    finally:
        await runner.cleanup()


async def test_done_chunk_count_is_the_content_events_sent(make_client: MakeClient,
                                                           llm_server: LLMTestServer) -> None:
    llm_server.push(Script(tokens=["Hi", " there.", " How", " are", " you?"]))
    client = await make_client(profile={**llm_profile(llm_server),
                                        "speech": {"enabled": False}})
    events = await chat_events(client, {"message": "hi"})
    content = [d for n, d in events if n == "content"]
    assert events[-1][1]["chunk_count"] == len(content)
    assert [d["chunk_index"] for d in content] == list(range(len(content)))


async def test_gateway_uses_the_turns_profile_not_the_current_one(
        make_client: MakeClient, llm_server: LLMTestServer) -> None:
    """A reload between prompt assembly and the LLM call must not mix configurations."""
    from companion_engine.keys import ENGINE
    from companion_engine.turn import Turn

    other = await LLMTestServer.start()
    try:
        client = await make_client(profile=llm_profile(llm_server, temperature=0.1))
        engine = client.app[ENGINE]
        leased = engine.profile.model_copy(deep=True)
        leased.llm.api_base = other.openai_base
        leased.llm.temperature = 0.5
        turn = Turn(profile=leased, user_message="hi", model="openai/test-model",
                    llm_params={"seed": 7})
        turn.messages.append(turn.user_entry)
        stream = engine.llm.stream(turn)
        await stream.open()
        text = "".join([d async for d in stream.deltas()])
        await stream.aclose()
        assert text == "Hello there!"
        assert not llm_server.requests and len(other.requests) == 1
        body = other.requests[0].body
        assert body["temperature"] == 0.5 and body["seed"] == 7
    finally:
        await other.close()


async def test_prompt_stage_failure_is_named_in_preview_and_chat(
        make_client: MakeClient, llm_server: LLMTestServer) -> None:
    client = await client_for(make_client, llm_server, prompt=["system_prompt", "api_broken"],
                              speech={**SILENT, "enabled": False})
    resp = await client.post("/api/prompt/preview", json={"message": "hi"})
    assert resp.status == 500
    body = await resp.json()
    assert "'api_broken'" in body["error"] and body["detail"]["plugin"] == "apiplugin"
    events = await chat_events(client, {"message": "hi"})
    assert names(events) == ["error"]
    assert events[0][1]["type"] == "stage_error" and "'api_broken'" in events[0][1]["error"]
    assert llm_server.requests == []  # the provider is never called


async def test_done_is_sent_only_once_the_reply_is_stored(make_client: MakeClient,
                                                         llm_server: LLMTestServer) -> None:
    """A reply the store could not keep is never acknowledged with ``done``."""
    from companion_engine.keys import ENGINE
    from companion_engine.shared import StoreUnavailable

    client = await make_client(profile={**llm_profile(llm_server),
                                        "speech": {"enabled": False}})
    store = client.app[ENGINE].store
    real = store.append_messages
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the reply, after the user's message went in
            raise StoreUnavailable("redis went away")
        return await real(*args, **kwargs)

    store.append_messages = flaky  # type: ignore[method-assign]
    llm_server.push(Script(tokens=["Hello", " there."]))
    events = await chat_events(client, {"message": "hi", "conversation_id": "kept"})
    assert "done" not in names(events)
    assert events[-1] == ("error", events[-1][1])
    assert events[-1][1]["type"] == "store_unavailable"
    llm_server.push(Script(tokens=["Fine", " now."]))
    events = await chat_events(client, {"message": "again", "conversation_id": "kept"})
    assert names(events)[-1] == "done"
