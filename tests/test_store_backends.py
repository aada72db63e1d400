"""The ``Store`` contract, run against SQLite and a real ``redis-server``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.store import Store, StoredMessage, open_store
from companion_engine.store.redis import split_prefix
from companion_engine.testing import LLMTestServer, Script, free_port
from tests.chat_helpers import chat_events, llm_profile
from tests.conftest import MakeClient

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, for this module."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(5)


_counter = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = await open_store("sqlite:///data/test.db", tmp_path)
    else:
        url = request.getfixturevalue("redis_url")
        s = await open_store(f"{url}?prefix=t{next(_counter)}:", tmp_path)
    try:
        yield s
    finally:
        await s.close()


async def test_settings_round_trip(store: Store) -> None:
    assert await store.get_setting("active_character") is None
    await store.set_setting("active_character", "seraphina")
    await store.set_setting("nested", {"a": [1, 2.5, None, "é"]})
    assert await store.get_setting("active_character") == "seraphina"
    assert await store.get_setting("nested") == {"a": [1, 2.5, None, "é"]}
    await store.set_setting("active_character", None)
    assert await store.get_setting("active_character") is None


async def test_conversation_append_read_delete(store: Store) -> None:
    assert await store.get_conversation("c1") is None
    greeting = StoredMessage("assistant", "Hello!", meta={"greeting": True})
    await store.append_messages("c1", [greeting, StoredMessage("user", "Hi", created_at=5.0)],
                                character_id="seraphina")
    first = await store.get_conversation("c1")
    assert first is not None
    await store.append_messages("c1", [StoredMessage("assistant", "Part", status="interrupted")],
                                character_id="someone-else")
    conv = await store.get_conversation("c1")
    assert conv is not None
    assert conv.character_id == "seraphina"  # set by the first append
    assert conv.created_at == first.created_at <= conv.updated_at
    assert [(m.role, m.content, m.status) for m in conv.messages] == [
        ("assistant", "Hello!", "complete"), ("user", "Hi", "complete"),
        ("assistant", "Part", "interrupted")]
    assert conv.messages[0].meta == {"greeting": True}
    assert conv.messages[1].created_at == 5.0
    assert await store.delete_conversation("c1") is True
    assert await store.get_conversation("c1") is None
    assert await store.delete_conversation("c1") is False


async def test_append_is_all_or_nothing(store: Store) -> None:
    bad = StoredMessage("assistant", "x", meta={"not json": {1, 2}})
    with pytest.raises(TypeError):
        await store.append_messages("c2", [StoredMessage("user", "kept?"), bad],
                                    character_id=None)
    assert await store.get_conversation("c2") is None


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]),
                          st.text(max_size=200),
                          st.dictionaries(st.text(max_size=10),
                                          st.integers() | st.text(max_size=20), max_size=3)),
                min_size=1, max_size=5))
async def test_any_text_round_trips(store: Store, rows: list[tuple[str, str, dict]]) -> None:
    cid = f"h{next(_counter)}"
    await store.append_messages(cid, [StoredMessage(r, c, meta=m) for r, c, m in rows],
                                character_id=None)
    conv = await store.get_conversation(cid)
    assert conv is not None
    assert [(m.role, m.content, m.meta) for m in conv.messages] == rows


async def test_two_instances_share_redis(redis_url: str, tmp_path: Path) -> None:
    a = await open_store(redis_url + "?prefix=shared:", tmp_path)
    b = await open_store(redis_url + "?prefix=shared:", tmp_path)
    other = await open_store(redis_url + "?prefix=other:", tmp_path)
    try:
        await a.append_messages("x", [StoredMessage("user", "from a")], character_id=None)
        await b.append_messages("x", [StoredMessage("assistant", "from b")], character_id=None)
        conv = await a.get_conversation("x")
        assert conv is not None and [m.content for m in conv.messages] == ["from a", "from b"]
        assert await other.get_conversation("x") is None
        await b.set_setting("k", 1)
        assert await a.get_setting("k") == 1
    finally:
        await a.delete_conversation("x")
        for s in (a, b, other):
            await s.close()


def test_prefix_is_taken_out_of_the_url() -> None:
    assert split_prefix("redis://h:1/0?prefix=x:&db=2") == ("redis://h:1/0?db=2", "x:")
    assert split_prefix("redis://h:1/0") == ("redis://h:1/0", "companion:")


async def test_unreachable_redis_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"(?i)connect"):
        await open_store(f"redis://127.0.0.1:{free_port()}/0", tmp_path)


async def test_app_stores_turns_in_redis(make_client: MakeClient, llm_server: LLMTestServer,
                                         redis_url: str) -> None:
    client = await make_client(profile=llm_profile(llm_server),
                               config={"store": {"url": redis_url + "?prefix=app:"}})
    llm_server.push(Script(tokens=["Stored", " in", " redis."]))
    events = await chat_events(client, {"message": "hi", "conversation_id": "r1"})
    assert events[-1][0] == "done"
    async with client.get("/api/conversations/r1") as resp:
        msgs = (await resp.json())["data"]["messages"]
    assert [m["content"] for m in msgs] == ["hi", "Stored in redis."]
    async with client.delete("/api/conversations/r1") as resp:
        assert resp.status == 200
