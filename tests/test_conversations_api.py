"""The conversation API without the LLM: list, create (group chats too), rename, edit,
delete from N, swipes, branch, Author's Note; versions and 409; garbage gets a clear 4xx
and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.keys import ENGINE
from companion_engine.store import StoredMessage
from tests.conftest import MakeClient
from tests.conversation_helpers import conversation, get_json, send, write_card


@pytest.fixture
async def client(make_client: MakeClient, tmp_path: Path) -> TestClient:
    write_card(tmp_path, "ann", "Ann", first_mes="Hi, {{user}}! I am {{char}}.",
               alternate_greetings=("Ann waves.", "", "Ann bows."),
               group_only_greetings=("Ann, to the group: hello all.",))
    write_card(tmp_path, "bob", "Bob", first_mes="Bob here.")
    write_card(tmp_path, "cid", "Cid")  # no greeting at all
    return await make_client(profile={"character": "ann", "user_name": "Zoe"})


async def seed(client: TestClient, cid: str, *pairs: tuple[str, str]) -> None:
    engine = client.app[ENGINE]  # type: ignore[index]
    await engine.store.append_messages(cid, [StoredMessage(r, c) for r, c in pairs],
                                       character_id="ann")


CHAT = (("assistant", "Hello!"), ("user", "Hi"), ("assistant", "How are you?"),
        ("user", "Fine"), ("assistant", "Good."))


async def test_create_a_conversation_with_a_chosen_greeting(client: TestClient) -> None:
    made = await send(client, "POST", "/api/conversations",
                      json={"character_id": "ann", "greeting": 3, "conversation_id": "c1",
                            "title": "Tea"})
    data = made["data"]
    assert (data["id"], data["version"], data["title"], data["character_ids"]) == (
        "c1", 1, "Tea", ["ann"])
    [greeting] = data["messages"]
    # the card's greetings are the swipes of the first message (the empty one left out)
    assert greeting["swipes"] == ["Hi, Zoe! I am Ann.", "Ann waves.", "Ann bows."]
    assert (greeting["content"], greeting["swipe_index"]) == ("Ann bows.", 2)
    assert greeting["meta"]["greeting"] is True and greeting["meta"]["character_id"] == "ann"
    assert await conversation(client, "c1") == data | {"summary": None, "authors_note": None}

    again = await send(client, "POST", "/api/conversations", 409,
                       json={"character_ids": ["bob"], "conversation_id": "c1"})
    assert again["detail"] == {"conversation_id": "c1"}
    missing = await send(client, "POST", "/api/conversations", 404,
                         json={"character_ids": ["ann", "nobody"]})
    assert missing["detail"] == {"missing": ["nobody"]}
    await send(client, "POST", "/api/conversations", 409, json={"greeting": 9})
    # the active character by default; a card without greeting opens an empty conversation
    default = await send(client, "POST", "/api/conversations", json={})
    assert default["data"]["character_id"] == "ann" and len(default["data"]["id"]) == 32
    empty = await send(client, "POST", "/api/conversations", json={"character_id": "cid"})
    assert empty["data"]["messages"] == []


async def test_a_group_opens_with_every_members_greeting(client: TestClient) -> None:
    made = await send(client, "POST", "/api/conversations",
                      json={"character_ids": ["bob", "cid", "ann"], "reply_order": "list",
                            "conversation_id": "g1"})
    data = made["data"]
    assert (data["character_id"], data["character_ids"], data["reply_order"]) == (
        "bob", ["bob", "cid", "ann"], "list")
    assert [(m["content"], m["meta"]["character_id"]) for m in data["messages"]] == [
        ("Bob here.", "bob"), ("Hi, Zoe! I am Ann.", "ann")]
    assert data["messages"][1]["swipes"][-1] == "Ann, to the group: hello all."
    await send(client, "POST", "/api/conversations", 422,
               json={"character_ids": ["ann", "bob"], "greeting": 1})
    await send(client, "POST", "/api/conversations", 422,
               json={"character_ids": ["ann", "ann"]})
    await send(client, "POST", "/api/conversations", 422,
               json={"character_ids": ["ann"], "character_id": "bob"})

    renamed = await send(client, "PATCH", "/api/conversations/g1",
                         json={"version": 1, "title": "Party", "reply_order": "manual",
                               "character_ids": ["ann", "bob"]})
    assert (renamed["version"], renamed["message_count"]) == (2, 2)
    after = await conversation(client, "g1")
    assert (after["title"], after["reply_order"], after["character_ids"],
            after["character_id"]) == ("Party", "manual", ["ann", "bob"], "ann")
    stale = await send(client, "PATCH", "/api/conversations/g1", 409,
                       json={"version": 1, "title": "x"})
    assert stale["detail"] == {"conversation_id": "g1", "expected": 1, "version": 2}
    await send(client, "PATCH", "/api/conversations/g1", 404,
               json={"version": 2, "character_ids": ["nobody"]})
    await send(client, "PATCH", "/api/conversations/g1", 422,
               json={"version": 2, "character_ids": None})
    await send(client, "PATCH", "/api/conversations/nope", 404, json={"version": 1})


async def test_list_newest_first_with_filter_and_paging(client: TestClient) -> None:
    await send(client, "POST", "/api/conversations", json={"character_ids": ["ann", "bob"],
                                                           "conversation_id": "l1"})
    await seed(client, "l2", ("user", "hey"))
    await send(client, "POST", "/api/conversations", json={"character_id": "bob",
                                                           "conversation_id": "l3"})
    listed = await get_json(client, "/api/conversations")
    assert [r["id"] for r in listed["data"]] == ["l3", "l2", "l1"] and listed["count"] == 3
    first = listed["data"][2]
    assert (first["message_count"], first["version"], first["character_ids"]) == (
        2, 1, ["ann", "bob"])
    assert first["last_message"]["index"] == 1
    assert first["last_message"]["content"] == "Bob here."
    bob = await get_json(client, "/api/conversations?character_id=bob")
    assert [r["id"] for r in bob["data"]] == ["l3", "l1"]
    page = await get_json(client, "/api/conversations?limit=1&offset=1")
    assert [r["id"] for r in page["data"]] == ["l2"]
    for bad in ("limit=0", "limit=501", "limit=x", "offset=-1", "character_id=Bad%20Id",
                "unknown=1"):
        body = await get_json(client, f"/api/conversations?{bad}", 422)
        assert body["success"] is False and "query" in body["error"]


async def test_edit_delete_swipe_and_branch_with_versions(client: TestClient) -> None:
    await seed(client, "e1", *CHAT)
    engine = client.app[ENGINE]  # type: ignore[index]
    conv = await engine.store.get_conversation("e1")
    await engine.store.add_swipe("e1", conv.messages[4].id, StoredMessage("assistant", "Great!"))

    edit = await send(client, "PUT", "/api/conversations/e1/messages/1",
                      json={"content": "Hi there", "version": 2})
    assert (edit["version"], edit["message"]["content"], edit["message"]["index"]) == (
        3, "Hi there", 1)
    assert edit["message"]["meta"] == {"edited": True}
    stale = await send(client, "PUT", "/api/conversations/e1/messages/1", 409,
                       json={"content": "lost", "version": 2})
    assert stale["detail"]["version"] == 3 and "version 3" in stale["error"]

    chosen = await send(client, "POST", "/api/conversations/e1/messages/4/swipe",
                        json={"swipe_index": 0, "version": 3})
    assert (chosen["message"]["content"], chosen["message"]["swipes"]) == (
        "Good.", ["Good.", "Great!"])
    await send(client, "POST", "/api/conversations/e1/messages/4/swipe", 404,
               json={"swipe_index": 2, "version": 4})
    await send(client, "POST", "/api/conversations/e1/messages/3/swipe", 409,
               json={"swipe_index": 0, "version": 4})  # a user message

    branched = await send(client, "POST", "/api/conversations/e1/branch",
                          json={"at": 2, "conversation_id": "e1-b"})
    assert branched["conversation_id"] == "e1-b"
    assert [m["content"] for m in branched["data"]["messages"]] == [
        "Hello!", "Hi there", "How are you?"]
    assert branched["data"]["branched_from"] == {"conversation_id": "e1", "at": 2}
    await send(client, "POST", "/api/conversations/e1/branch", 409,
               json={"at": 2, "conversation_id": "e1-b"})
    await send(client, "POST", "/api/conversations/e1/branch", 409, json={"at": 0, "version": 1})
    await send(client, "POST", "/api/conversations/e1/branch", 404, json={"at": 5})

    deleted = await send(client, "DELETE", "/api/conversations/e1/messages/3?version=4")
    assert (deleted["version"], deleted["message_count"], deleted["message"]) == (5, 3, None)
    await send(client, "DELETE", "/api/conversations/e1/messages/3?version=5", 404)
    await send(client, "DELETE", "/api/conversations/e1/messages/0?version=4", 409)
    assert [m["content"] for m in (await conversation(client, "e1"))["messages"]] == [
        "Hello!", "Hi there", "How are you?"]
    assert len((await conversation(client, "e1-b"))["messages"]) == 3


async def test_authors_note_is_kept_in_the_conversation_state(client: TestClient) -> None:
    await seed(client, "a1", ("user", "hi"))
    note = await send(client, "PUT", "/api/conversations/a1/authors_note",
                      json={"text": "Keep it short.", "depth": 2})
    assert note["authors_note"] == {"text": "Keep it short.", "depth": 2, "frequency": 1,
                                    "role": "system"}
    assert (await conversation(client, "a1"))["authors_note"] == note["authors_note"]
    engine = client.app[ENGINE]  # type: ignore[index]
    assert (await engine.store.get_state("a1"))["authors_note"]["depth"] == 2
    await send(client, "PUT", "/api/conversations/a1/authors_note", 422,
               json={"text": "x", "role": "narrator"})
    await send(client, "PUT", "/api/conversations/a1/authors_note", 422,
               json={"text": "x", "depth": -1})
    await send(client, "PUT", "/api/conversations/none/authors_note", 404, json={"text": "x"})
    await send(client, "DELETE", "/api/conversations/a1/authors_note")
    assert (await conversation(client, "a1"))["authors_note"] is None
    # the version counts the messages: a note never makes an edit stale
    assert (await conversation(client, "a1"))["version"] == 1


# --- garbage --------------------------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, str, Any]] = [
    ("PUT", "/api/conversations/g/messages/1", b"{not json"),
    ("PUT", "/api/conversations/g/messages/1", b""),
    ("PUT", "/api/conversations/g/messages/1", {"content": "x"}),  # no version
    ("PUT", "/api/conversations/g/messages/1", {"content": 5, "version": 1}),
    ("PUT", "/api/conversations/g/messages/1", {"content": "x", "version": 0}),
    ("PUT", "/api/conversations/g/messages/1", {"content": "x", "version": "1"}),
    ("PUT", "/api/conversations/g/messages/1", {"content": "x", "version": 1, "extra": 1}),
    ("PUT", "/api/conversations/g/messages/1", {"content": "x" * 32_001, "version": 1}),
    ("PUT", "/api/conversations/g/messages/1", [1, 2]),
    ("PUT", "/api/conversations/g/messages/abc", {"content": "x", "version": 1}),
    ("PUT", "/api/conversations/g/messages/-1", {"content": "x", "version": 1}),
    ("PUT", "/api/conversations/g/messages/1e3", {"content": "x", "version": 1}),
    ("PUT", "/api/conversations/g/messages/9999999999", {"content": "x", "version": 1}),
    ("PUT", "/api/conversations/g/messages/%D9%A3", {"content": "x", "version": 1}),
    ("PUT", "/api/conversations/..%2Fx/messages/1", {"content": "x", "version": 1}),
    ("DELETE", "/api/conversations/g/messages/1", None),
    ("DELETE", "/api/conversations/g/messages/1?version=abc", None),
    ("DELETE", "/api/conversations/g/messages/1?version=1&version=2&x=1", None),
    ("POST", "/api/conversations/g/messages/2/swipe", {"swipe_index": -1, "version": 1}),
    ("POST", "/api/conversations/g/messages/2/swipe", {"swipe_index": True, "version": 1}),
    ("POST", "/api/conversations/g/branch", {"at": -1}),
    ("POST", "/api/conversations/g/branch", {"at": 1, "conversation_id": "../x"}),
    ("POST", "/api/conversations/g/branch", {}),
    ("PATCH", "/api/conversations/g", {"title": "x"}),
    ("PATCH", "/api/conversations/g", {"version": 1, "reply_order": "random"}),
    ("PATCH", "/api/conversations/g", {"version": 1, "title": "t" * 201}),
    ("POST", "/api/conversations", {"character_ids": []}),
    ("POST", "/api/conversations", {"character_ids": "ann"}),
    ("POST", "/api/conversations", {"character_ids": ["../../etc"]}),
    ("POST", "/api/conversations", {"character_ids": ["a"] * 17}),
    ("POST", "/api/conversations", {"conversation_id": "-x"}),
    ("POST", "/api/conversations", {"reply_order": 1}),
    ("POST", "/api/conversations", {"greeting": -1}),
    ("POST", "/api/conversations", ('{"n": ' + "9" * 5000 + "}").encode()),
]


async def test_garbage_gets_a_clear_4xx_and_changes_nothing(client: TestClient) -> None:
    await seed(client, "g", *CHAT)
    before = await conversation(client, "g")
    for method, path, body in BAD_REQUESTS:
        if isinstance(body, bytes) or body is None:
            kwargs: dict[str, Any] = {"data": body or None,
                                      "headers": {"Content-Type": "application/json"}}
        else:
            kwargs = {"json": body}
        async with client.request(method, path, **kwargs) as resp:
            text = await resp.text()
            assert 400 <= resp.status < 500, (method, path, resp.status, text)
            reply = json.loads(text)
            assert reply["success"] is False and reply["error"], (method, path, reply)
    assert await conversation(client, "g") == before
    assert [r["id"] for r in (await get_json(client, "/api/conversations"))["data"]] == ["g"]


JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**12) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["content", "version", "swipe_index", "at", "title",
                                         "conversation_id", "x"]), c, max_size=4),
                    max_leaves=8)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([("PUT", "/api/conversations/h/messages/1"),
                        ("POST", "/api/conversations/h/messages/2/swipe"),
                        ("POST", "/api/conversations/h/branch"),
                        ("PATCH", "/api/conversations/h")]), JSON)
async def test_any_json_body_is_answered_never_a_500(client: TestClient, route: tuple[str, str],
                                                     body: Any) -> None:
    engine = client.app[ENGINE]  # type: ignore[index]
    if await engine.store.get_conversation("h") is None:
        await seed(client, "h", *CHAT)
    before = await engine.store.get_conversation("h")
    async with client.request(route[0], route[1], json=body) as resp:
        reply = await resp.json()
        assert resp.status in (200, 400, 404, 409, 422), (resp.status, reply)
    after = await engine.store.get_conversation("h")
    if resp.status != 200 or route[1].endswith("/branch"):
        assert after == before
    else:
        assert after is not None and before is not None and after.version == before.version + 1
