"""RecentHistory in the real engine: the last N messages, the user's message exactly once."""

from companion_engine.testing import Script

import companion_recent_history

PLUGINS = [companion_recent_history]


def profile(llm_server, **options) -> dict:
    return {"llm": {"model": "openai/test", "api_base": llm_server.openai_base},
            "prompt": ["system_prompt", {"recent_history": options}],
            "speech": {"enabled": False}}


def conversation(n: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}
            for i in range(n)] + [{"role": "user", "content": "the new one"}]


async def test_keeps_the_last_messages_and_sends_the_users_once(companion_client, llm_server):
    client = await companion_client(profile=profile(llm_server, max_messages=4),
                                    plugins=PLUGINS)
    body = {"messages": conversation(10)}
    preview = await (await client.post("/api/prompt/preview", json=body)).json()
    contents = [m["content"] for m in preview["messages"][1:]]
    assert contents == ["message 6", "message 7", "message 8", "message 9", "the new one"]
    assert preview["tokens"]["history_dropped"] == 6
    llm_server.push(Script(tokens=["Sure."]))
    reply = await (await client.post("/api/chat", json=body)).json()
    assert reply["content"] == "Sure."
    sent = [m["content"] for m in llm_server.requests[-1].body["messages"]]
    assert sent.count("the new one") == 1 and sent[-1] == "the new one"


async def test_server_managed_conversation_grows_and_is_trimmed(companion_client, llm_server):
    client = await companion_client(profile=profile(llm_server, max_messages=2),
                                    plugins=PLUGINS)
    for i in range(3):
        llm_server.push(Script(tokens=[f"reply {i}"]))
        resp = await client.post("/api/chat", json={"message": f"ask {i}",
                                                    "conversation_id": "c1"})
        assert resp.status == 200
    sent = [m["content"] for m in llm_server.requests[-1].body["messages"][1:]]
    assert sent == ["ask 1", "reply 1", "ask 2"]
