"""Note in the real engine: the note reaches the prompt, from options or plugin settings."""

import companion_note

PLUGINS = [companion_note]


def profile(**options) -> dict:
    return {"prompt": ["system_prompt", {"note": options}, "history"]}


async def preview(client) -> list[tuple[str, str]]:
    body = await (await client.post("/api/prompt/preview", json={"message": "hi"})).json()
    return [(m["role"], m["content"]) for m in body["messages"]]


async def test_the_note_from_plugin_settings(companion_client):
    note = {"note": "Be kind."}
    settings = {"plugins": {"companion-note": note}}
    client = await companion_client(profile=profile(), plugins=PLUGINS, config=settings)
    assert ("system", "Be kind.") in await preview(client)


async def test_the_stage_option_wins(companion_client):
    client = await companion_client(profile=profile(note="Rhyme, {{char}}."),
                                    plugins=PLUGINS)
    messages = await preview(client)
    assert ("system", "Rhyme, Assistant.") in messages
    assert messages[-1] == ("user", "hi")
