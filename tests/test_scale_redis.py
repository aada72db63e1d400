"""Two ``companion serve`` engines on one real ``redis-server``, requests spread over both.

Engine A and engine B are separate processes with the same config and a shared
``characters/`` folder; Redis (AOF, ``appendfsync always``) holds everything else.
Requests alternate between them: a conversation continues across engines, a rate
limit and a stream cap count a client once, an upload on A is listed by B on the
next request, a model switch or an activation on A is what B uses, ``POST /-/reload``
on A reloads B, and Redis killed (SIGKILL) and restarted mid-run costs 503s while it is
down, never another 5xx, and loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from companion_engine.testing import Script, write_project
from tests.process_helpers import ServeProcess, ThreadedLLM, get_json, stop_all, wait_until
from tests.redis_helpers import RedisServer

pytestmark = pytest.mark.timeout(240)

RATE = 10
_clients = itertools.count(1)


def new_client() -> dict[str, str]:
    """Headers that make the requests come from a client of their own (via the proxy)."""
    n = next(_clients)
    return {"X-Forwarded-For": f"198.51.{n // 250}.{n % 250 + 1}"}


@pytest.fixture(scope="module")
def llm() -> Iterator[ThreadedLLM]:
    server = ThreadedLLM().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), durable=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, llm: ThreadedLLM,
            redis_server: RedisServer) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    root = tmp_path_factory.mktemp("cluster")
    write_project(root, {"llm": {"model": "openai/test-model", "api_base": llm.openai_base,
                                 "timeout_s": 10}},
                  {"store": {"url": redis_server.url}, "reload": True,
                   "rate_limit": {"requests": RATE, "window_s": 60},
                   "server": {"trusted_proxies": ["127.0.0.1"], "max_streams_per_ip": 2}})
    a, b = ServeProcess(root, name="a"), ServeProcess(root, name="b")
    try:
        a.start(wait=False)
        b.start()
        a.wait_ready()
        yield a, b
    finally:
        stop_all([a, b])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, *,
               headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def test_a_conversation_continues_across_engines(
        engines: tuple[ServeProcess, ServeProcess], http: aiohttp.ClientSession) -> None:
    client = new_client()
    for i in range(4):
        engine = engines[i % 2]
        status, body = await call(http, "POST", engine.url + "/api/chat", headers=client,
                                  json={"message": f"turn {i}", "conversation_id": "x-eng"})
        assert status == 200, body
    for engine in engines:
        _, body = await call(http, "GET", engine.url + "/api/conversations/x-eng",
                             headers=client)
        users = [m["content"] for m in body["data"]["messages"] if m["role"] == "user"]
        assert users == ["turn 0", "turn 1", "turn 2", "turn 3"]


async def test_a_rate_limit_counts_a_client_once_across_engines(
        engines: tuple[ServeProcess, ServeProcess], http: aiohttp.ClientSession) -> None:
    client = new_client()
    statuses = []
    for i in range(RATE + 4):
        status, _ = await call(http, "POST", engines[i % 2].url + "/api/chat", headers=client,
                               json={"messages": [{"role": "user", "content": "hi"}]})
        statuses.append(status)
    assert Counter(statuses) == {200: RATE, 429: 4}
    assert statuses[:RATE] == [200] * RATE  # both engines refuse once the bucket is empty


async def test_a_stream_cap_counts_a_client_once_across_engines(
        engines: tuple[ServeProcess, ServeProcess], llm: ThreadedLLM,
        http: aiohttp.ClientSession) -> None:
    client = new_client()
    llm.push(Script(tokens=["slow"], first_delay_s=3), Script(tokens=["slow"], first_delay_s=3))
    body = {"messages": [{"role": "user", "content": "hi"}]}
    held = [await http.post(e.url + "/api/chat/stream", json=body, headers=client)
            for e in engines]
    try:
        assert [r.status for r in held] == [200, 200]
        for engine in engines:
            status, _ = await call(http, "POST", engine.url + "/api/chat/stream", json=body,
                                   headers=client)
            assert status == 429
    finally:
        for resp in held:
            resp.close()
    # Released when the streams end: a new one opens (a slot freed by A serves B too).
    async def opened() -> bool:
        async with http.post(engines[1].url + "/api/chat/stream", json=body,
                             headers=client) as resp:
            await resp.read()
            return resp.status == 200
    for _ in range(50):
        if await opened():
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the stream slots were never released")


async def test_an_upload_on_one_engine_is_listed_by_the_other_at_once(
        engines: tuple[ServeProcess, ServeProcess], http: aiohttp.ClientSession) -> None:
    a, b = engines
    client = new_client()
    card = {"spec": "chara_card_v2", "spec_version": "2.0",
            "data": {"name": "Ulla", "description": "from A", "first_mes": "Hello from A."}}
    form = aiohttp.FormData()
    form.add_field("file", json.dumps(card).encode(), filename="ulla.json",
                   content_type="application/json")
    status, body = await call(http, "POST", a.url + "/api/characters/upload", data=form,
                              headers=client)
    assert status == 200, body
    cid = body["data"]["id"]
    _, listing = await call(http, "GET", b.url + "/api/characters", headers=client)
    assert cid in [c["id"] for c in listing["data"]]
    status, body = await call(http, "POST", a.url + f"/api/characters/{cid}/activate",
                              headers=client)
    assert status == 200
    _, status_b = await call(http, "GET", b.url + "/api/status", headers=client)
    assert status_b["character"] == cid
    status, body = await call(http, "PUT", b.url + f"/api/characters/{cid}", headers=client,
                              json={"description": "edited on B"})
    assert status == 200, body
    _, detail = await call(http, "GET", a.url + f"/api/characters/{cid}", headers=client)
    assert detail["data"]["description"] == "edited on B"
    assert (await call(http, "DELETE", b.url + f"/api/characters/{cid}", headers=client))[0] \
        == 200
    assert (await call(http, "GET", a.url + f"/api/characters/{cid}", headers=client))[0] == 404


async def test_a_model_switch_on_one_engine_is_used_by_the_other(
        engines: tuple[ServeProcess, ServeProcess], http: aiohttp.ClientSession) -> None:
    a, b = engines
    status, _ = await call(http, "POST", a.url + "/api/models/switch",
                           json={"new_model": "openai/other-model"})
    assert status == 200
    _, body = await call(http, "GET", b.url + "/api/status")
    assert body["active_model"] == "openai/other-model"
    status, reply = await call(http, "POST", b.url + "/api/chat", headers=new_client(),
                               json={"messages": [{"role": "user", "content": "which?"}]})
    assert status == 200 and reply["model"] == "openai/other-model"
    await call(http, "POST", b.url + "/api/models/switch",
               json={"new_model": "openai/test-model"})
    _, body = await call(http, "GET", a.url + "/api/status")
    assert body["active_model"] == "openai/test-model"


async def test_post_reload_on_one_engine_reloads_the_other(
        engines: tuple[ServeProcess, ServeProcess], http: aiohttp.ClientSession) -> None:
    a, b = engines
    before = get_json(b.url + "/health")["config"]["generation"]
    status, body = await call(http, "POST", a.url + "/-/reload")
    assert status == 200 and body["broadcast"] == 1
    wait_until(lambda: get_json(b.url + "/health")["config"]["generation"] > before)
    health = get_json(b.url + "/health")
    assert health["shared"] == {"backend": "redis", "connected": True, "limits": "cluster"}
    assert health["engine"] != get_json(a.url + "/health")["engine"]


async def test_redis_killed_and_restarted_mid_run(
        engines: tuple[ServeProcess, ServeProcess], redis_server: RedisServer,
        http: aiohttp.ClientSession) -> None:
    """Load on both engines while Redis dies and comes back: only 200/503, nothing
    acknowledged lost, and both engines recover without a restart."""
    acked_turns: list[tuple[str, str]] = []
    acked_cards: list[str] = []
    stream_errors: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    stop = asyncio.Event()

    async def chatter(n: int) -> None:
        client = new_client()
        for i in itertools.count():
            if stop.is_set():
                return
            engine = engines[(n + i) % 2]
            cid, message = f"kill-{n}-{i % 3}", f"m{n}-{i}"
            body = {"message": message, "conversation_id": cid}
            if i % 4 == 3:  # a stream: 200 then done, or an error event saying why
                status, text = await call(http, "POST", engine.url + "/api/chat/stream",
                                          headers=client, json=body)
                statuses[("stream", status)] += 1
                if status == 200 and "event: error" in text:
                    error = json.loads(text.split("event: error\ndata: ")[1].split("\n")[0])
                    stream_errors.append(error["type"])
            else:
                status, _ = await call(http, "POST", engine.url + "/api/chat", headers=client,
                                       json=body)
                statuses[("chat", status)] += 1
                if status == 200:
                    acked_turns.append((cid, message))
            if status == 429:  # this client's bucket is empty: become another client
                client = new_client()
            await asyncio.sleep(0.02)

    async def uploader() -> None:
        client = new_client()
        for i in itertools.count():
            if stop.is_set():
                return
            status, body = await call(http, "POST", engines[i % 2].url + "/api/characters",
                                      headers=client, json={"name": f"Kill {i}",
                                                            "description": "d"})
            statuses[("card", status)] += 1
            if status == 200:
                acked_cards.append(body["data"]["id"])
            if status == 429:
                client = new_client()
            await asyncio.sleep(0.1)

    async def reader() -> None:
        while not stop.is_set():
            for engine in engines:
                status, _ = await call(http, "GET", engine.url + "/api/status")
                statuses[("status", status)] += 1
            await asyncio.sleep(0.05)

    for engine in engines:  # warm (LiteLLM imported), so the load runs while Redis is away
        status, _ = await call(http, "POST", engine.url + "/api/chat", headers=new_client(),
                               json={"messages": [{"role": "user", "content": "warm"}]})
        assert status == 200

    def refused() -> int:
        return sum(n for (_, s), n in statuses.items() if s == 503)

    async def until(what: str, check: Callable[[], bool]) -> None:
        """A phase lasts until the load has shown it, however slow a loaded machine is
        (fixed sleeps saw no outage when the engines were starved of CPU)."""
        deadline = asyncio.get_running_loop().time() + 60
        while not check():
            assert asyncio.get_running_loop().time() < deadline, (what, statuses)
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(c) for c in (chatter(0), chatter(1), uploader(), reader())]
    try:
        await until("turns and cards acknowledged before the kill",
                    lambda: len(acked_turns) >= 4 and len(acked_cards) >= 2)
        redis_server.kill()
        await until("a request noticed the outage", lambda: refused() > 0)
        down = refused()
        await asyncio.sleep(1.0)  # the load goes on against the dead store a while
        redis_server.start()
        turns_before = len(acked_turns)
        await until("turns acknowledged again after the restart",
                    lambda: len(acked_turns) >= turns_before + 2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    codes = {s for (_, s) in statuses}
    assert codes <= {200, 429, 503}, statuses
    assert set(stream_errors) <= {"store_unavailable"}, stream_errors
    assert down > 0, "no request noticed the outage"
    assert statuses[("status", 200)] > 0
    # Both engines serve store-backed requests again, without a restart.
    for engine in engines:
        status, body = await call(http, "POST", engine.url + "/api/chat", headers=new_client(),
                                  json={"message": "back?", "conversation_id": "after-kill"})
        assert status == 200, body
        assert get_json(engine.url + "/health")["shared"]["connected"] is True
    # Every acknowledged turn is stored, user message and reply.
    for cid in {c for c, _ in acked_turns}:
        _, body = await call(http, "GET", engines[0].url + f"/api/conversations/{cid}")
        stored = body["data"]["messages"]
        users = [m["content"] for m in stored if m["role"] == "user"]
        for c, message in acked_turns:
            if c == cid:
                assert message in users
                reply = stored[[m["content"] for m in stored].index(message) + 1]
                assert reply["role"] == "assistant" and reply["status"] == "complete"
    assert acked_turns and acked_cards
    # Every acknowledged card is listed by both engines (a card written while Redis was
    # away reaches the other engine through its file watcher).
    for engine in engines:
        def listed(engine: ServeProcess = engine) -> bool:
            ids = {c["id"] for c in get_json(engine.url + "/api/characters")["data"]}
            return set(acked_cards) <= ids
        wait_until(listed, timeout=10)
