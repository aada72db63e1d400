"""WordLimit in the real engine: the reply ends after N words with its own finish reason."""

from companion_engine.testing import Script

import companion_word_limit

PLUGINS = [companion_word_limit]


def profile(llm_server, **options) -> dict:
    return {"llm": {"model": "openai/test", "api_base": llm_server.openai_base},
            "output": ["strip_think", {"word_limit": options}], "speech": {"enabled": False}}


async def test_the_reply_ends_after_n_words_and_the_provider_stops(companion_client,
                                                                    llm_server):
    tokens = ["One tw", "o three", " four five", " six seven", " eight", " nine"]
    llm_server.push(Script(tokens=tokens, delay_s=0.05))
    client = await companion_client(profile=profile(llm_server, max_words=4), plugins=PLUGINS)
    reply = await (await client.post("/api/chat", json={"message": "count"})).json()
    assert reply["content"] == "One two three four"
    assert reply["finish_reason"] == "word_limit"
    request = llm_server.requests[-1]
    await request.wait_closed(5)
    assert not request.completed  # the engine closed the LLM stream early


async def test_a_short_reply_is_untouched(companion_client, llm_server):
    llm_server.push(Script(tokens=["Just", " three", " words."]))
    client = await companion_client(profile=profile(llm_server, max_words=3), plugins=PLUGINS)
    reply = await (await client.post("/api/chat", json={"message": "hi"})).json()
    assert reply["content"] == "Just three words."
    assert reply["finish_reason"] == "stop"
