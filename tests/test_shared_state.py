"""The ``SharedState`` contract, on this process (``LocalState``) and on a real Redis.

Rate-limit buckets, stream slots, a request's admission (both at once, with the
store's settings on Redis) and broadcasts; for Redis also: two engines count
one client once, a crashed engine's slots expire, and an outage falls back to
per-engine limits and heals by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.shared import Admission, Event, SharedState, StoreUnavailable, is_outage
from companion_engine.shared.local import LocalState
from companion_engine.shared.redis import RedisState
from companion_engine.shared.redis_client import connect
from companion_engine.store import Store
from tests.redis_helpers import RedisServer

_prefixes = iter(range(1_000_000))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


def _prefix() -> str:
    return f"ss{next(_prefixes)}:"


async def _redis_state(url: str, prefix: str, name: str) -> RedisState:
    return await RedisState.open(f"{url}?prefix={prefix}", engine_id=name)


@contextlib.asynccontextmanager
async def _store_and_state(server: RedisServer, tmp_path: Path
                           ) -> AsyncIterator[tuple[Store, SharedState]]:
    """A Redis store and the shared state opened on it, as ``create_app`` opens them."""
    from companion_engine.shared import open_shared_state
    from companion_engine.store import open_store

    url = f"{server.url}?prefix={_prefix()}"
    store = await open_store(url, tmp_path)
    state = await open_shared_state(url, engine_id="e", store=store)
    try:
        yield store, state
    finally:
        await state.close()
        await store.close()


@pytest.fixture(params=["local", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[SharedState]:
    if request.param == "local":
        s: SharedState = LocalState("e1")
    else:
        s = await _redis_state(request.getfixturevalue("redis_server").url, _prefix(), "e1")
    try:
        yield s
    finally:
        await s.close()


# --- the contract, both backends ---------------------------------------------------------------


async def test_bucket_allows_capacity_then_says_how_long_to_wait(state: SharedState) -> None:
    waits = [await state.take("rate", "1.2.3.4", 3, 60) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(20.0, abs=0.5)  # one token per 20 s
    assert await state.take("rate", "5.6.7.8", 3, 60) == 0.0  # clients are independent
    assert await state.take("auth", "1.2.3.4", 3, 60) == 0.0  # and so are scopes


async def test_bucket_refills_at_its_rate(state: SharedState) -> None:
    assert await state.take("rate", "c", 2, 0.2) == 0.0
    assert await state.take("rate", "c", 2, 0.2) == 0.0
    assert await state.take("rate", "c", 2, 0.2) > 0
    await asyncio.sleep(0.25)
    assert await state.take("rate", "c", 2, 0.2) == 0.0


async def test_stream_slots_cap_and_release(state: SharedState) -> None:
    a = await state.acquire_stream("ip", 2)
    b = await state.acquire_stream("ip", 2)
    assert a is not None and b is not None and a != b
    assert await state.acquire_stream("ip", 2) is None
    assert await state.acquire_stream("other", 2) is not None
    await state.release_stream(a)
    c = await state.acquire_stream("ip", 2)
    assert c is not None
    await state.release_stream(b)
    await state.release_stream(c)


async def test_admission_spends_the_token_then_takes_a_slot(state: SharedState) -> None:
    rate = ("rate", 2, 60.0)
    first = await state.admit("ip", rate=rate, streams=1)
    assert first.wait == 0.0 and first.slot is not None
    full = await state.admit("ip", rate=rate, streams=1)  # the token is spent all the same
    assert full.wait == 0.0 and full.slot is None
    limited = await state.admit("ip", rate=rate, streams=1)
    assert limited.wait > 0 and limited.slot is None
    await state.release_stream(first.slot)
    # The refused admission took no slot; one freed by a plain release serves the next.
    assert (await state.admit("ip", streams=1)).slot is not None
    # Parts not asked for are not touched: a slot alone spends no token, a token no slot.
    assert await state.admit("other") == Admission()
    only_slot = await state.admit("other", streams=1)
    assert only_slot.slot is not None
    assert await state.take("rate", "other", 1, 60) == 0.0
    assert (await state.admit("third", rate=("rate", 1, 60.0))).slot is None
    assert await state.acquire_stream("third", 1) is not None


async def test_admission_reads_settings_only_where_it_holds_them(state: SharedState) -> None:
    admission = await state.admit("ip", rate=("rate", 5, 60.0), settings=["a", "b"])
    assert admission.wait == 0.0
    assert admission.settings is None  # no store's settings here: the caller reads them


async def test_redis_admission_reads_the_stores_settings(redis_server: RedisServer,
                                                         tmp_path: Path) -> None:
    async with _store_and_state(redis_server, tmp_path) as (store, state):
        await store.set_setting("model_override", "openai/x")
        await store.set_setting("active_character", {"id": "ada", "n": [1, 2]})
        names = ["model_override", "absent", "active_character"]
        got = await state.admit("ip", rate=("rate", 1, 60.0), streams=2, settings=names)
        assert got.wait == 0.0 and got.slot is not None
        assert got.settings == await store.get_settings(names) == {
            "model_override": "openai/x", "active_character": {"id": "ada", "n": [1, 2]}}
        # Refused by the rate limit: no slot, the settings still read (what the request
        # would have seen), and an empty list reads nothing.
        refused = await state.admit("ip", rate=("rate", 1, 60.0), streams=2, settings=names)
        assert refused.wait > 0 and refused.slot is None and refused.settings == got.settings
        assert (await state.admit("ip", streams=2, settings=[])).settings is None
        await state.release_stream(got.slot)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["take", "open", "admit", "close"]), max_size=30))
async def test_slots_never_exceed_the_limit(state: SharedState, ops: list[str]) -> None:
    key = f"h{next(_prefixes)}"
    held = []
    for op in ops:
        if op in ("open", "admit"):
            slot = (await state.acquire_stream(key, 3) if op == "open" else
                    (await state.admit(key, rate=("rate", 1000, 60.0), streams=3)).slot)
            assert (slot is None) == (len(held) == 3)
            if slot is not None:
                held.append(slot)
        elif op == "close" and held:
            await state.release_stream(held.pop())
    for slot in held:
        await state.release_stream(slot)
    assert all([await state.acquire_stream(key, 3) for _ in range(3)])


# --- Redis: several engines -------------------------------------------------------------------


async def test_two_engines_count_a_client_once(redis_server: RedisServer) -> None:
    prefix = _prefix()
    a = await _redis_state(redis_server.url, prefix, "a")
    b = await _redis_state(redis_server.url, prefix, "b")
    try:
        allowed = 0
        for i in range(10):
            allowed += await (a if i % 2 else b).take("rate", "client", 5, 60) == 0.0
        assert allowed == 5
        slots = [await (a if i % 2 else b).acquire_stream("client", 3) for i in range(4)]
        assert [s is not None for s in slots] == [True, True, True, False]
        # An admission spends from the same buckets and slots, on either engine.
        admitted = [await (a if i % 2 else b).admit("c2", rate=("rate", 4, 60.0), streams=2)
                    for i in range(5)]
        assert [(x.wait == 0.0, x.slot is not None) for x in admitted] == [
            (True, True), (True, True), (True, False), (True, False), (False, False)]
    finally:
        await a.close()
        await b.close()


async def test_a_crashed_engines_slots_expire(redis_server: RedisServer) -> None:
    prefix = _prefix()
    crashed = await _redis_state(redis_server.url, prefix, "crashed")
    crashed.slot_ttl_s = 0.3
    assert await crashed.acquire_stream("ip", 1) is not None
    # The engine dies without releasing (its renewal task dies with it).
    await crashed.client.aclose()
    other = await _redis_state(redis_server.url, prefix, "other")
    try:
        assert await other.acquire_stream("ip", 1) is None
        await asyncio.sleep(0.4)
        assert await other.acquire_stream("ip", 1) is not None
    finally:
        await other.close()


async def test_a_live_engine_renews_its_slots(redis_server: RedisServer) -> None:
    prefix = _prefix()
    live = await _redis_state(redis_server.url, prefix, "live")
    live.slot_ttl_s, live.slot_renew_s = 0.3, 0.1
    other = await _redis_state(redis_server.url, prefix, "other")

    async def ignore(event: Event) -> None:
        pass

    await live.start(ignore)
    try:
        assert await live.acquire_stream("ip", 1) is not None
        await asyncio.sleep(0.6)  # twice the TTL: still held, it was renewed
        assert await other.acquire_stream("ip", 1) is None
    finally:
        await live.close()  # releases what it held
        assert await other.acquire_stream("ip", 1) is not None
        await other.close()


async def test_broadcast_reaches_the_others_not_the_sender(redis_server: RedisServer) -> None:
    prefix = _prefix()
    engines = [await _redis_state(redis_server.url, prefix, f"e{i}") for i in range(3)]
    got: dict[str, list[Event]] = {e.engine_id: [] for e in engines}
    arrived = asyncio.Event()

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def handle(event: Event) -> None:
            got[name].append(event)
            if sum(map(len, got.values())) >= 2:
                arrived.set()
        return handle

    for e in engines:
        await e.start(handler(e.engine_id))
    try:
        for _ in range(100):  # subscriptions are set up by the listener tasks
            if all(e._listening for e in engines):
                break
            await asyncio.sleep(0.01)
        # A stranger's garbage on the channel is ignored, never fatal.
        await engines[0].client.publish(engines[0].channel, "{not json")
        assert await engines[0].publish({"type": "reload"}) == 2
        await asyncio.wait_for(arrived.wait(), 5)
        assert got["e0"] == []
        assert [ev["type"] for ev in got["e1"]] == ["reload"] == [ev["type"] for ev in got["e2"]]
        assert got["e1"][0]["origin"] == "e0"
    finally:
        for e in engines:
            await e.close()


async def test_outage_falls_back_to_local_limits_and_heals(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    state = await _redis_state(server.url, _prefix(), "e")

    async def ignore(event: Event) -> None:
        pass

    await state.start(ignore)
    try:
        assert await state.take("rate", "c", 2, 60) == 0.0
        assert state.connected
        server.kill()
        # Limits still hold (per engine now); the store answers StoreUnavailable.
        assert [await state.take("rate", "c", 2, 60) == 0.0 for _ in range(3)] == \
            [True, True, False]
        assert not state.connected
        slot = await state.acquire_stream("c", 1)
        assert slot is not None and await state.acquire_stream("c", 1) is None
        await state.release_stream(slot)
        admitted = await state.admit("d", rate=("rate", 1, 60.0), streams=1, settings=["x"])
        assert admitted.wait == 0.0 and admitted.slot is not None
        assert admitted.settings is None  # not read: the store itself answers 503
        again = await state.admit("d", rate=("rate", 1, 60.0), streams=1)
        assert again.wait > 0 and again.slot is None
        await state.release_stream(admitted.slot)
        with pytest.raises(StoreUnavailable) as info:
            await state.client.get("x")
        assert is_outage(info.value)
        server.start()  # same port
        assert await state.take("rate", "fresh", 2, 60) == 0.0  # no restart needed
        assert state.connected
        for _ in range(300):  # the listener resubscribes by itself
            if state._listening:
                break
            await asyncio.sleep(0.01)
        assert state._listening
    finally:
        await state.close()
        server.stop()


async def test_store_and_state_share_one_client(redis_server: RedisServer,
                                                tmp_path: Path) -> None:
    async with _store_and_state(redis_server, tmp_path) as (store, state):
        assert isinstance(state, RedisState) and state.client is store.client  # type: ignore[attr-defined]
        await store.set_setting("model_override", "openai/x")
        assert await store.get_settings(["model_override", "absent"]) == \
            {"model_override": "openai/x"}


async def test_client_outage_is_store_unavailable(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    client, _ = await connect(server.url)
    try:
        async with client.pipeline(transaction=True) as tx:
            tx.set("k", json.dumps(1))
            await tx.execute()
        server.kill()
        with pytest.raises(StoreUnavailable):
            async with client.pipeline(transaction=True) as tx:
                tx.get("k")
                await tx.execute()
        assert not client.available
    finally:
        await client.aclose()
        server.stop()
