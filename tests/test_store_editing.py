"""The editing contract of ``Store``, run against SQLite and a real ``redis-server``:
edit, delete from N, swipes, continue, branch, group conversations, listing,
versions under concurrency, and one transaction per change."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.store import (
    Conversation,
    ConversationExists,
    ConversationNotFound,
    InvalidEdit,
    MessageNotFound,
    Store,
    StoredMessage,
    VersionConflict,
)
from tests.store_helpers import redis_url, store, unique

__all__ = ["redis_url", "store"]  # fixtures


async def seeded(store: Store, cid: str, *pairs: tuple[str, str]) -> Conversation:
    await store.append_messages(cid, [StoredMessage(r, c) for r, c in pairs], character_id="sera")
    conv = await store.get_conversation(cid)
    assert conv is not None
    return conv


def contents(conv: Conversation | None) -> list[str]:
    assert conv is not None
    return [m.content for m in conv.messages]


CHAT = (("assistant", "Hello!"), ("user", "Hi"), ("assistant", "How are you?"),
        ("user", "Fine"), ("assistant", "Good."))


async def test_edit_a_message(store: Store) -> None:
    conv = await seeded(store, "e1", *CHAT)
    after = await store.edit_message("e1", 1, "Hi there", expected_version=conv.version)
    assert after.version == conv.version + 1
    stored = await store.get_conversation("e1")
    assert stored is not None and stored.version == after.version
    assert contents(stored) == ["Hello!", "Hi there", "How are you?", "Fine", "Good."]
    assert stored.messages[1].meta["edited"] is True
    assert stored.messages[1].id == conv.messages[1].id  # same message, new text
    assert [m.content for m in after.messages] == contents(stored)


async def test_a_stale_or_wrong_edit_changes_nothing(store: Store) -> None:
    conv = await seeded(store, "e2", *CHAT)
    with pytest.raises(VersionConflict) as info:
        await store.edit_message("e2", 1, "x", expected_version=conv.version - 1)
    assert (info.value.expected, info.value.actual) == (conv.version - 1, conv.version)
    with pytest.raises(MessageNotFound):
        await store.edit_message("e2", 5, "x", expected_version=conv.version)
    with pytest.raises(MessageNotFound):
        await store.edit_message("e2", -1, "x", expected_version=None)
    with pytest.raises(ConversationNotFound):
        await store.edit_message("nope", 0, "x", expected_version=None)
    with pytest.raises(TypeError):  # not JSON: fails inside the transaction, rolled back
        await store.extend_message("e2", conv.messages[-1].id, "!", status="complete",
                                   meta={"bad": {1, 2}})
    again = await store.get_conversation("e2")
    assert again is not None and again.version == conv.version
    assert contents(again) == contents(conv)


async def test_delete_from_a_message_on(store: Store) -> None:
    conv = await seeded(store, "d1", *CHAT)
    after = await store.delete_messages("d1", 3, expected_version=conv.version)
    assert contents(await store.get_conversation("d1")) == ["Hello!", "Hi", "How are you?"]
    assert after.version == conv.version + 1
    await store.append_messages("d1", [StoredMessage("user", "Again")], character_id=None)
    assert contents(await store.get_conversation("d1"))[-1] == "Again"
    await store.delete_messages("d1", 0, expected_version=None)
    emptied = await store.get_conversation("d1")
    assert emptied is not None and emptied.messages == [] and emptied.character_id == "sera"
    with pytest.raises(MessageNotFound):
        await store.delete_messages("d1", 0, expected_version=None)


async def test_swipes_keep_every_reply_and_choose_one(store: Store) -> None:
    conv = await seeded(store, "s1", *CHAT)
    last = conv.messages[-1]
    await store.add_swipe("s1", last.id, StoredMessage("assistant", "Great!", meta={"n": 2}))
    await store.add_swipe("s1", last.id, StoredMessage("assistant", "Nice", "interrupted"))
    c = await store.get_conversation("s1")
    assert c is not None
    m = c.messages[-1]
    assert [s.content for s in m.swipes] == ["Good.", "Great!", "Nice"]
    assert (m.swipe_index, m.content, m.status, m.id) == (2, "Nice", "interrupted", last.id)
    chosen = await store.choose_swipe("s1", 4, 1, expected_version=c.version)
    m = chosen.messages[-1]
    assert (m.content, m.meta, m.swipe_index) == ("Great!", {"n": 2}, 1)
    assert (await store.get_conversation("s1")).messages[-1].as_dict() == m.as_dict()  # type: ignore[union-attr]
    # editing a swiped message edits the chosen alternative only
    edited = await store.edit_message("s1", 4, "Great!!", expected_version=None)
    assert [s.content for s in edited.messages[-1].swipes] == ["Good.", "Great!!", "Nice"]
    with pytest.raises(InvalidEdit):
        await store.choose_swipe("s1", 3, 0, expected_version=None)  # a user message
    with pytest.raises(MessageNotFound):
        await store.choose_swipe("s1", 4, 3, expected_version=None)
    with pytest.raises(MessageNotFound):
        await store.add_swipe("s1", "no-such-id", StoredMessage("assistant", "x"))
    # a message never regenerated has its content as its only swipe
    single = await store.choose_swipe("s1", 2, 0, expected_version=None)
    assert single.messages[2].content == "How are you?"


async def test_a_failed_reply_is_replaced_not_kept_as_a_swipe(store: Store) -> None:
    await store.append_messages("s2", [StoredMessage("user", "Hi"),
                                       StoredMessage("assistant", "", "error")],
                                character_id=None)
    conv = await store.get_conversation("s2")
    assert conv is not None
    after = await store.add_swipe("s2", conv.messages[1].id, StoredMessage("assistant", "Hey"))
    m = after.messages[1]
    assert ([s.content for s in m.swipes], m.swipe_index, m.status) == (["Hey"], 0, "complete")


async def test_continue_extends_the_chosen_reply(store: Store) -> None:
    await store.append_messages("c1", [StoredMessage("user", "Tell me"),
                                       StoredMessage("assistant", "Once upon", "interrupted")],
                                character_id=None)
    conv = await store.get_conversation("c1")
    assert conv is not None
    mid = conv.messages[1].id
    after = await store.extend_message("c1", mid, " a time.", status="complete",
                                       meta={"continued": 1})
    m = after.messages[1]
    assert (m.content, m.status, m.meta["continued"]) == ("Once upon a time.", "complete", 1)
    await store.add_swipe("c1", mid, StoredMessage("assistant", "Long ago", "interrupted"))
    after = await store.extend_message("c1", mid, ", far away", status="complete")
    m = after.messages[1]
    assert [s.content for s in m.swipes] == ["Once upon a time.", "Long ago, far away"]
    assert m.swipes[1].status == m.status == "complete"
    assert (await store.get_conversation("c1")).messages[1].content == "Long ago, far away"  # type: ignore[union-attr]


async def test_branch_copies_messages_up_to_n_and_the_state(store: Store) -> None:
    conv = await seeded(store, "b1", *CHAT)
    await store.add_swipe("b1", conv.messages[2].id, StoredMessage("assistant", "Alt"))
    await store.update_state("b1", {"lorebook_timed": {"3": {"sticky": 2}}, "summary": "s"})
    branch = await store.branch("b1", 2, new_id="b1-branch")
    assert branch.id == "b1-branch" and branch.version == 1
    assert branch.branched_from == {"conversation_id": "b1", "at": 2}
    stored = await store.get_conversation("b1-branch")
    assert stored is not None
    assert contents(stored) == ["Hello!", "Hi", "Alt"]
    assert [s.content for s in stored.messages[2].swipes] == ["How are you?", "Alt"]
    assert not {m.id for m in stored.messages} & {m.id for m in conv.messages}
    assert stored.character_ids == ["sera"] and stored.branched_from == branch.branched_from
    assert await store.get_state("b1-branch") == {"lorebook_timed": {"3": {"sticky": 2}},
                                                  "summary": "s"}
    # the branch lives its own life
    await store.update_state("b1-branch", {"summary": "other"})
    await store.delete_messages("b1-branch", 1, expected_version=None)
    assert len(contents(await store.get_conversation("b1"))) == 5
    assert (await store.get_state("b1"))["summary"] == "s"
    # refusals
    with pytest.raises(ConversationExists):
        await store.branch("b1", 1, new_id="b1-branch")
    with pytest.raises(VersionConflict):
        await store.branch("b1", 1, expected_version=1)
    with pytest.raises(MessageNotFound):
        await store.branch("b1", 5)
    with pytest.raises(ConversationNotFound):
        await store.branch("nope", 0)
    auto = await store.branch("b1", 0)
    assert auto.id not in ("b1", "b1-branch") and contents(auto) == ["Hello!"]


async def test_group_conversation_created_once_and_listed(store: Store) -> None:
    group = Conversation(
        "g1", None, 0, 0,
        [StoredMessage("assistant", "Hi from A", meta={"character_id": "a"}),
         StoredMessage("assistant", "Hi from B", meta={"character_id": "b"})],
        character_ids=["a", "b"], reply_order="list", title="Tavern")
    made = await store.create_conversation(group, state={"lorebook_timed": {}})
    assert (made.version, made.character_id, made.is_group) == (1, "a", True)
    assert all(m.id and m.created_at for m in made.messages)
    with pytest.raises(ConversationExists):
        await store.create_conversation(group)
    stored = await store.get_conversation("g1")
    assert stored is not None
    assert (stored.character_ids, stored.reply_order, stored.title) == (["a", "b"], "list",
                                                                        "Tavern")
    assert contents(stored) == ["Hi from A", "Hi from B"]
    assert await store.get_state("g1") == {"lorebook_timed": {}}

    await store.append_messages("solo", [StoredMessage("user", "x")], character_id="b")
    await store.append_messages("other", [StoredMessage("user", "y")], character_id="c")
    rows = await store.list_conversations()
    assert [r.id for r in rows][:3] == ["other", "solo", "g1"]
    assert [r.id for r in await store.list_conversations(character_id="b")] == ["solo", "g1"]
    assert [r.id for r in await store.list_conversations(character_id="b", limit=1)] == ["solo"]
    assert [r.id for r in await store.list_conversations(character_id="b", offset=1)] == ["g1"]
    assert [r.id for r in await store.list_conversations(limit=2, offset=1)] == ["solo", "g1"]
    [g] = [r for r in rows if r.id == "g1"]
    assert (g.message_count, g.version, g.title, g.character_ids) == (2, 1, "Tavern",
                                                                      ["a", "b"])
    assert g.last_message is not None and g.last_message.content == "Hi from B"
    assert await store.list_conversations(character_id="nobody") == []

    moved = await store.update_conversation("g1", expected_version=1, character_ids=["b", "c"],
                                            reply_order="manual", title=None)
    assert (moved.character_id, moved.reply_order, moved.title, moved.version) == (
        "b", "manual", None, 2)
    assert "g1" in [r.id for r in await store.list_conversations(character_id="c")]
    assert "g1" not in [r.id for r in await store.list_conversations(character_id="a")]
    with pytest.raises(InvalidEdit):
        await store.update_conversation("g1", expected_version=None, character_ids=[])
    assert await store.delete_conversation("g1")
    assert "g1" not in [r.id for r in await store.list_conversations(character_id="b")]
    assert await store.get_state("g1") == {}


async def test_concurrent_edits_never_interleave(store: Store) -> None:
    """Ten clients edit one conversation from the same version: exactly one wins, the
    others are told they are stale; nothing is half-applied."""
    conv = await seeded(store, "x1", *CHAT)

    async def edit(i: int) -> str:
        try:
            await store.edit_message("x1", 1, f"edit {i}", expected_version=conv.version)
        except VersionConflict:
            return "stale"
        return f"edit {i}"

    outcomes = await asyncio.gather(*[edit(i) for i in range(10)])
    winners = [o for o in outcomes if o != "stale"]
    assert len(winners) == 1
    after = await store.get_conversation("x1")
    assert after is not None and after.version == conv.version + 1
    assert contents(after)[1] == winners[0]


async def test_concurrent_writers_without_versions_lose_nothing(store: Store) -> None:
    """Replies landing as swipes, new turns appending and edits, all at once: each one is
    applied exactly once (Redis retries a transaction another writer invalidated)."""
    conv = await seeded(store, "x2", *CHAT)
    last = conv.messages[-1].id
    swipes = [store.add_swipe("x2", last, StoredMessage("assistant", f"alt {i}"))
              for i in range(8)]
    appends = [store.append_messages("x2", [StoredMessage("user", f"u{i}")], character_id=None)
               for i in range(8)]
    edits = [store.edit_message("x2", 1, f"hi {i}", expected_version=None) for i in range(4)]
    await asyncio.gather(*swipes, *appends, *edits)
    after = await store.get_conversation("x2")
    assert after is not None
    assert after.version == conv.version + 20
    assert sorted(s.content for s in after.messages[4].swipes) == sorted(
        ["Good.", *[f"alt {i}" for i in range(8)]])
    assert sorted(contents(after)[5:]) == sorted(f"u{i}" for i in range(8))
    assert contents(after)[1].startswith("hi ")


# --- the same random edits on a model and on the store --------------------------------------


@dataclass
class Model:
    """What a conversation should look like: (role, swipes, chosen)."""

    rows: list[tuple[str, list[str], int]] = field(default_factory=list)

    def view(self) -> list[tuple[str, str, list[str]]]:
        return [(r, s[i], s) for r, s, i in self.rows]


OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.sampled_from(["user", "assistant"]), st.text(max_size=8)),
    st.tuples(st.just("edit"), st.integers(0, 6), st.text(max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 6)),
    st.tuples(st.just("swipe"), st.integers(0, 6), st.text(min_size=1, max_size=8)),
    st.tuples(st.just("choose"), st.integers(0, 6), st.integers(0, 3)),
), min_size=1, max_size=12)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPS)
async def test_random_edits_match_the_model(store: Store, ops: list[tuple]) -> None:
    cid, model, version = unique("r"), Model(), 0
    await store.append_messages(cid, [StoredMessage("user", "start")], character_id=None)
    model.rows.append(("user", ["start"], 0))
    version = 1
    for op in ops:
        n = len(model.rows)
        try:
            if op[0] == "append":
                version = await store.append_messages(
                    cid, [StoredMessage(op[1], op[2])], character_id=None)
                model.rows.append((op[1], [op[2]], 0))
                continue
            if op[0] == "edit":
                await store.edit_message(cid, op[1], op[2], expected_version=version)
                if op[1] < n:
                    role, swipes, i = model.rows[op[1]]
                    model.rows[op[1]] = (role, [*swipes[:i], op[2], *swipes[i + 1:]], i)
            elif op[0] == "delete":
                await store.delete_messages(cid, op[1], expected_version=version)
                del model.rows[op[1]:]
            elif op[0] == "swipe":
                conv = await store.get_conversation(cid)
                assert conv is not None
                target = conv.messages[op[1]].id if op[1] < n else "missing"
                await store.add_swipe(cid, target, StoredMessage("assistant", op[2]))
                role, swipes, i = model.rows[op[1]]
                kept = [s for s in swipes if s]  # empty replies are not kept as swipes
                model.rows[op[1]] = (role, [*kept, op[2]], len(kept))
            elif op[0] == "choose":
                await store.choose_swipe(cid, op[1], op[2], expected_version=version)
                role, swipes, _ = model.rows[op[1]]
                assert role == "assistant" and op[2] < len(swipes)
                model.rows[op[1]] = (role, swipes, op[2])
            version += 1
        except MessageNotFound:
            assert op[1] >= n or op[0] == "choose"
        except InvalidEdit:
            assert op[0] == "choose" and model.rows[op[1]][0] == "user"
        conv = await store.get_conversation(cid)
        assert conv is not None and conv.version == version
        got = [(m.role, m.content, [s.content for s in m.swipes] or [m.content])
               for m in conv.messages]
        assert got == model.view()


# --- the cache of parsed conversations -----------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
async def two_instances(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """Two stores on the same data, as two engine processes would be."""
    from companion_engine.store import open_store

    if request.param == "sqlite":
        url = "sqlite:///data/shared.db"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix={unique('two')}:"
    a, b = await open_store(url, tmp_path), await open_store(url, tmp_path)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_a_cached_conversation_follows_every_writer(two_instances: Any) -> None:
    a, b = two_instances
    await seeded(a, "k1", *CHAT)
    loads = 0
    real_load = a._load

    async def counting(cid: str) -> Any:
        nonlocal loads
        loads += 1
        return await real_load(cid)

    a._load = counting  # type: ignore[method-assign]
    first = await a.get_conversation("k1")
    # this instance's own writes keep its copy current: no re-read of the messages
    await a.append_messages("k1", [StoredMessage("user", "more")], character_id=None)
    await a.edit_message("k1", 0, "Hi!", expected_version=None)
    mine = await a.get_conversation("k1")
    assert loads == 0 and first is not None and mine is not None
    assert contents(mine) == ["Hi!", *contents(first)[1:], "more"]
    # another instance's writes are seen (the version moved): read again
    await b.append_messages("k1", [StoredMessage("assistant", "from b")], character_id=None)
    seen = await a.get_conversation("k1")
    assert contents(seen)[-1] == "from b" and loads == 1
    await b.delete_messages("k1", 1, expected_version=None)
    assert contents(await a.get_conversation("k1")) == ["Hi!"]
    # a snapshot is the caller's to change
    snap = await a.get_conversation("k1")
    assert snap is not None
    snap.messages.clear()
    assert contents(await a.get_conversation("k1")) == ["Hi!"]
    await b.delete_conversation("k1")
    assert await a.get_conversation("k1") is None


async def test_without_the_cache_every_read_is_a_full_one(store: Store) -> None:
    await seeded(store, "k2", *CHAT)
    loads = 0
    real_load = store._load

    async def counting(cid: str) -> Any:
        nonlocal loads
        loads += 1
        return await real_load(cid)

    store._load = counting  # type: ignore[method-assign]
    for _ in range(2):  # seeded() read it once already
        assert contents(await store.get_conversation("k2")) == [c for _, c in CHAT]
    assert loads == 0
    store.cache_messages = 0
    await store.append_messages("k2", [StoredMessage("user", "x")], character_id=None)
    for _ in range(2):
        assert contents(await store.get_conversation("k2"))[-1] == "x"
    assert loads == 2
