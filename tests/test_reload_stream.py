"""Hot reload while chat turns stream: a running turn finishes on the pipeline it started
with, and a stream of reloads (valid and invalid) under load fails no request.

Real server, real scripted LLM over HTTP through LiteLLM, real files.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from companion_engine.config import AppConfig
from companion_engine.keys import ENGINE
from companion_engine.testing import LLMTestServer, Script
from tests.reload_helpers import (
    PROBE_PLUGIN,
    probe_profile,
    read_text,
    reload_status,
    save,
    save_yaml,
    wait_error,
    wait_generation,
    wait_until,
)

USER = {"messages": [{"role": "user", "content": "Tell me something."}]}


def chat_profile(label: str, llm: LLMTestServer, close_log: Path | None = None) -> dict[str, Any]:
    return probe_profile(label, close_log, prompt=["system_prompt", "history"], llm={
        "model": "openai/test-model", "api_base": llm.openai_base, "timeout_s": 20})


async def events(resp: ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The SSE events of a response as (name, data), as they arrive."""
    name = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            assert name is not None, "data before event"
            yield name, json.loads(line[len("data: "):])
            name = None


@pytest.fixture
async def server(make_config: Any, make_client: Any, llm_server: LLMTestServer,
                 tmp_path: Path) -> tuple[TestClient, AppConfig, Path]:
    log = tmp_path / "closed.log"
    cfg = make_config(profile=chat_profile("A", llm_server, log), config={
        "reload": True, "rate_limit": {"requests": 100_000, "window_s": 60},
        "server": {"max_streams_per_ip": 64}})
    (cfg.path("plugins") / "probe.py").write_text(PROBE_PLUGIN)
    return await make_client(cfg), cfg, log


async def test_stream_in_flight_finishes_on_the_old_profile(
        server: tuple[TestClient, AppConfig, Path], llm_server: LLMTestServer) -> None:
    client, cfg, log = server
    llm_server.push(Script(tokens=[f"word{i} " for i in range(30)], delay_s=0.04))
    resp = await client.post("/api/chat/stream", json=USER)
    assert resp.status == 200
    stream = events(resp)
    seen = []
    async for name, data in stream:
        seen.append((name, data))
        if name == "content":
            break

    # Mid-stream: the profile changes and the new pipeline goes live.
    save_yaml(cfg.path("profiles") / "default.yaml", chat_profile("B", llm_server, log))
    await wait_generation(client, 2)
    assert client.server.app[ENGINE].pipeline.output[0].options.label == "B"
    assert await read_text(log) == ""  # the old pipeline is still in use: not closed

    seen += [item async for item in stream]
    names = [n for n, _ in seen]
    assert "error" not in names and names[-1] == "done"
    done = seen[-1][1]
    assert done["full_content"] == "[A]" + "".join(f"word{i} " for i in range(30))
    assert llm_server.requests[-1].completed

    # Released by the last turn, the old pipeline's stages are closed ...
    await wait_until(lambda: read_text(log), what="old pipeline closed")
    assert (await read_text(log)).split() == ["A"]
    # ... and a new turn runs on the new profile.
    body = await (await client.post("/api/chat", json=USER)).json()
    assert body["content"].startswith("[B]"), body


async def test_reloads_under_streaming_load_fail_no_request(
        server: tuple[TestClient, AppConfig, Path], llm_server: LLMTestServer) -> None:
    client, cfg, _ = server
    llm_server.default = Script(tokens=["One ", "two ", "three ", "four ", "five."],
                                delay_s=0.01)
    profile = cfg.path("profiles") / "default.yaml"
    broken_plugin = cfg.path("plugins") / "broken.py"
    stop = asyncio.Event()
    streams: list[tuple[int, list[tuple[str, dict[str, Any]]]]] = []
    statuses: list[int] = []

    async def streamer() -> None:
        while not stop.is_set():
            resp = await client.post("/api/chat/stream", json=USER)
            streams.append((resp.status, [e async for e in events(resp)]))

    async def poller() -> None:
        while not stop.is_set():
            statuses.append((await client.get("/api/status")).status)
            await asyncio.sleep(0.005)

    workers = [asyncio.create_task(streamer()) for _ in range(4)]
    workers.append(asyncio.create_task(poller()))
    labels = {"A"}
    invalid = [
        lambda: save(profile, "llm: {model: [\n"),                          # YAML syntax
        lambda: save_yaml(profile, {**chat_profile("x", llm_server), "output": ["nope"]}),
        lambda: save(broken_plugin, "raise ImportError('half-written plugin')\n"),
    ]
    try:
        generation = 1
        for i in range(20):
            if i % 3 == 2:
                invalid[(i // 3) % len(invalid)]()
                status = await wait_error(client)
                assert status["generation"] == generation
            else:
                if broken_plugin.exists():  # fixing the plugin is a valid change of its own
                    broken_plugin.unlink()
                    generation += 1
                    await wait_generation(client, generation)
                labels.add(f"v{i}")
                save_yaml(profile, chat_profile(f"v{i}", llm_server))
                generation += 1
                status = await wait_generation(client, generation)
                assert status["last_error"] is None
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*workers)

    print(f"{len(streams)} streams, {len(statuses)} status requests during 20 reloads")
    assert len(streams) >= 20 and statuses
    for status, evs in streams:
        names = [n for n, _ in evs]
        assert status == 200 and "error" not in names and names[-1] == "done", evs[-3:]
        content = evs[-1][1]["full_content"]
        assert content[1:content.index("]")] in labels
        assert content.endswith("One two three four five.")
    assert set(statuses) == {200}
    assert (await reload_status(client))["generation"] == generation
