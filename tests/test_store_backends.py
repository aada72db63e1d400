"""The ``Store`` contract, run against SQLite and a real ``redis-server``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.store import Store, StoredMessage, open_store
from companion_engine.store.redis import split_prefix
from companion_engine.testing import LLMTestServer, Script, free_port
from tests.chat_helpers import chat_events, llm_profile
from tests.conftest import MakeClient
from tests.store_helpers import redis_url, store, unique

__all__ = ["redis_url", "store"]  # fixtures

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
    cid = unique("h")
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


# --- per-conversation state and versions (the contract the memory stage builds on) ----------


async def test_state_is_a_shallow_merge_and_none_deletes(store: Store) -> None:
    assert await store.get_state("s1") == {}
    await store.append_messages("s1", [StoredMessage("user", "hi")], character_id="x")
    await store.update_state("s1", {"summary": {"text": "They met.", "upto": 4},
                                    "lorebook_timed": {"7": {"sticky_until": 12}}})
    await store.update_state("s1", {"authors_note": {"text": "Be brief", "depth": 2},
                                    "summary": {"text": "They met twice."}})
    assert await store.get_state("s1") == {
        "summary": {"text": "They met twice."},  # replaced whole: a shallow merge
        "lorebook_timed": {"7": {"sticky_until": 12}},
        "authors_note": {"text": "Be brief", "depth": 2}}
    await store.update_state("s1", {"lorebook_timed": None, "never-set": None})
    assert set(await store.get_state("s1")) == {"summary", "authors_note"}
    await store.update_state("s1", {})
    assert set(await store.get_state("s1")) == {"summary", "authors_note"}


async def test_state_update_is_all_or_nothing(store: Store) -> None:
    await store.update_state("s2", {"a": 1})
    with pytest.raises(TypeError):
        await store.update_state("s2", {"a": 2, "b": {1, 2}})
    assert await store.get_state("s2") == {"a": 1}


async def test_state_without_stored_messages_and_deleted_with_the_conversation(
        store: Store) -> None:
    # client-managed history has no stored messages, yet lorebook timers need a home
    await store.update_state("client-side", {"lorebook_timed": {"1": 3}})
    assert await store.get_state("client-side") == {"lorebook_timed": {"1": 3}}
    assert await store.get_conversation("client-side") is None
    await store.append_messages("s3", [StoredMessage("user", "hi")], character_id=None)
    await store.update_state("s3", {"summary": "x"})
    assert await store.delete_conversation("s3") is True
    assert await store.get_state("s3") == {}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.none() | st.recursive(st.integers(-10**6, 10**6) | st.text(max_size=20) | st.booleans(),
                             lambda c: st.lists(c, max_size=3)
                             | st.dictionaries(st.text(max_size=5), c, max_size=3),
                             max_leaves=6),
    max_size=4), min_size=1, max_size=4))
async def test_state_matches_a_dict_merge(store: Store, updates: list[dict]) -> None:
    cid, expected = unique("sm"), {}
    for changes in updates:
        await store.update_state(cid, changes)
        expected = {k: v for k, v in {**expected, **changes}.items() if v is not None}
    assert await store.get_state(cid) == expected


async def test_version_grows_with_every_change(store: Store) -> None:
    assert await store.append_messages("v1", [StoredMessage("user", "a")],
                                       character_id=None) == 1
    assert await store.append_messages("v1", [StoredMessage("assistant", "b")],
                                       character_id=None) == 2
    conv = await store.get_conversation("v1")
    assert conv is not None and conv.version == 2
    await store.update_state("v1", {"summary": "not a change to the messages"})
    conv = await store.get_conversation("v1")
    assert conv is not None and conv.version == 2
    assert all(m.id for m in conv.messages) and len({m.id for m in conv.messages}) == 2


async def test_concurrent_first_turns_store_one_greeting(store: Store) -> None:
    """Issue 19.2 at the store: 20 first turns at once, one of them creates the conversation."""
    greeting = StoredMessage("assistant", "Hello!", meta={"greeting": True})

    async def first_turn(i: int) -> int:
        return await store.append_messages("dup", [StoredMessage("user", f"m{i}")],
                                           character_id="c", opening=[greeting])

    versions = await asyncio.gather(*[first_turn(i) for i in range(20)])
    conv = await store.get_conversation("dup")
    assert conv is not None
    assert [m.content for m in conv.messages].count("Hello!") == 1
    assert conv.messages[0].content == "Hello!"
    assert sorted(m.content for m in conv.messages[1:]) == sorted(f"m{i}" for i in range(20))
    assert sorted(versions) == list(range(1, 21)) and conv.version == 20


async def test_sqlite_schema_1_database_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript("""
            CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE conversations (id TEXT PRIMARY KEY, character_id TEXT,
                created_at REAL NOT NULL, updated_at REAL NOT NULL);
            CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
                conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
                role TEXT NOT NULL, content TEXT NOT NULL, status TEXT NOT NULL,
                created_at REAL NOT NULL, meta TEXT);
            INSERT INTO conversations VALUES ('old', 'sera', 1.0, 2.0);
            INSERT INTO messages(conversation_id, role, content, status, created_at, meta)
                VALUES ('old', 'user', 'hi', 'complete', 1.0, '{"user_name": "Ann"}'),
                       ('old', 'assistant', 'hello', 'complete', 2.0, NULL);""")
    for _ in range(2):  # migrating twice is a no-op
        store = await open_store(f"sqlite:///{db}", tmp_path)
        try:
            conv = await store.get_conversation("old")
            assert conv is not None and conv.version == 1 and conv.character_ids == ["sera"]
            assert [(m.role, m.content, m.meta) for m in conv.messages] == [
                ("user", "hi", {"user_name": "Ann"}), ("assistant", "hello", {})]
            assert conv.messages[0].id != conv.messages[1].id
            await store.update_state("old", {"summary": "s"})
        finally:
            await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


async def test_redis_data_of_the_first_layout_is_listed(redis_url: str, tmp_path: Path) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.hset("legacy:conv:l1", mapping={"character_id": '"sera"',
                                                  "created_at": "1.0", "updated_at": "2.0"})
    await client.rpush("legacy:conv:l1:messages", json.dumps(
        {"role": "user", "content": "hi", "status": "complete", "created_at": 1.0, "meta": {}}))
    await client.aclose()
    store = await open_store(redis_url + "?prefix=legacy:", tmp_path)
    try:
        [row] = await store.list_conversations(character_id="sera")
        assert (row.id, row.message_count, row.version) == ("l1", 1, 1)
        conv = await store.get_conversation("l1")
        assert conv is not None and conv.messages[0].content == "hi"
        assert await store.append_messages("l1", [StoredMessage("assistant", "yo")],
                                           character_id=None) == 2
    finally:
        await store.delete_conversation("l1")
        await store.close()


def test_a_store_left_open_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    """aiosqlite's worker threads are not daemons: one store a failing test (or a crashed
    start-up) left open would hang the interpreter at exit, and CI with it."""
    import subprocess
    import sys

    script = ("import asyncio, sys\nfrom pathlib import Path\n"
              "from companion_engine.store import open_store\nKEEP = []\n"
              "async def main():\n"
              "    KEEP.append(await open_store('sqlite:///left-open.db', Path(sys.argv[1])))\n"
              "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
