"""/openapi.json as a client generator reads it, and as the server behaves.

The document is checked as valid OpenAPI 3.1 (``openapi-spec-validator``), then as
a client generator needs it: one operationId per operation, every ``$ref``
resolvable, every parameter typed, security that follows the running config. The
named schemas are checked against the code that enforces them (patterns, the LLM
gateway's providers, the TTS backend's voices), without calling any provider.
``tests/test_schemathesis.py`` checks the document against the live server.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from companion_engine.cards.ids import is_valid_id
from companion_engine.llm import ModelError, validate_model
from companion_engine.openapi import operation_id
from companion_engine.patterns import CONVERSATION_ID, MODEL_NAME, NOT_BLANK, VOICE_NAME, ecma
from companion_engine.security import is_open as served_without_key

KEY = "openapi-test-key-0123456789abcdef"
SPEECH = {"speech": {"enabled": True, "tts": "espeak"}}


async def spec_of(make_client: Any, make_config: Any, **config: Any) -> dict[str, Any]:
    client: TestClient = await make_client(make_config(profile=SPEECH, config=config))
    headers = {"Authorization": f"Bearer {KEY}"} if config else {}
    resp = await client.get("/openapi.json", headers=headers)
    assert resp.status == 200
    return await resp.json()  # type: ignore[no-any-return]


@pytest.fixture(params=["api-key", "no-key"])
async def spec(request: pytest.FixtureRequest, make_client: Any, make_config: Any
               ) -> dict[str, Any]:
    config = {"server": {"api_key": KEY}} if request.param == "api-key" else {}
    return await spec_of(make_client, make_config, **config)


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def walk(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{where}/{i}")


def resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def is_typed(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A schema that says what its values are: a type, an enum/const, or a $ref/choice of
    typed schemas."""
    if "$ref" in schema:
        return is_typed(spec, resolve(spec, schema["$ref"]))
    if "type" in schema or "enum" in schema or "const" in schema:
        return True
    choices = schema.get("anyOf") or schema.get("oneOf")
    return bool(choices) and all(is_typed(spec, c) for c in choices)


async def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)  # OpenAPI 3.1 with JSON Schema 2020-12: raises on the first problem
    for where, node in walk(spec):  # every pattern is a regex a JavaScript client reads
        if isinstance(node.get("pattern"), str) and not where.endswith("/properties"):
            jsonschema_rs.validator_for({"pattern": node["pattern"]})
            assert r"\Z" not in node["pattern"], where


async def test_a_client_generator_can_use_it(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", i) for i in ids), ids
    for where, node in walk(spec):
        if isinstance(node.get("$ref"), str):
            assert resolve(spec, node["$ref"]) is not None, where
    for method, path, op in operations(spec):
        assert op["operationId"] == operation_id(method, path)
        assert op["summary"] and op["responses"], (method, path)
        for param in op.get("parameters", []):
            assert is_typed(spec, param["schema"]), (method, path, param)
        for status, response in op["responses"].items():
            for media, content in response.get("content", {}).items():
                assert is_typed(spec, content["schema"]), (method, path, status, media)
    assert {"post_api_chat_switch", "post_api_models_switch", "get_api_characters_by_id",
            "post_v1_chat_completions"} <= set(ids) or "/v1/models" not in spec["paths"]


async def test_security_follows_the_running_config(make_client: Any, make_config: Any) -> None:
    keyed = await spec_of(make_client, make_config, server={"api_key": KEY})
    assert keyed["security"] == [{"bearer": []}]
    assert keyed["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for method, path, op in operations(keyed):
        is_open = op.get("security") == []
        # what the auth middleware serves without the key, and nothing else
        assert is_open == served_without_key(path), (method, path)
        assert ("401" in op["responses"]) != is_open, (method, path)
        if not is_open:
            assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"]

    assert {"/", "/health", "/openapi.json", "/docs", "/app"} <= {
        path for _, path, op in operations(keyed) if op.get("security") == []}

    loopback = await spec_of(make_client, make_config)
    assert "security" not in loopback and "securitySchemes" not in loopback["components"]
    for method, path, op in operations(loopback):
        assert op["security"] == [] and "401" not in op["responses"], (method, path)
        assert "403" in op["responses"], (method, path)  # a host name that is not loopback


async def test_path_ids_carry_their_patterns(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for method, path, op in operations(spec):
        for param in op.get("parameters", []):
            if param["in"] != "path" or param["name"] != "id":
                continue
            want = "CharacterId" if path.startswith("/api/characters") else "ConversationId"
            assert param["schema"] == {"$ref": f"#/components/schemas/{want}"}, (method, path)
    assert schemas["CharacterId"]["pattern"] == "^(?!upload$)[a-z0-9][a-z0-9_-]{0,63}$"
    assert schemas["ConversationId"]["pattern"] == ecma(CONVERSATION_ID)


async def test_chat_bodies_say_messages_or_message(spec: dict[str, Any]) -> None:
    chat = spec["components"]["schemas"]["ChatRequest"]
    one_of = jsonschema_rs.validator_for({**chat, "components": spec["components"]})
    assert one_of.is_valid({"message": "hi"})
    assert one_of.is_valid({"messages": [{"role": "user", "content": "hi"}]})
    for bad in ({}, {"message": "hi", "messages": [{"role": "user", "content": "hi"}]},
                {"message": " \n"}, {"messages": [{"role": "user", "content": " "}]},
                {"message": "hi", "greeting": True}, {"message": "hi", "model": "gpt"},
                {"message": "hi", "voice": "../x"}, {"message": "hi", "character_id": "A"}):
        assert not one_of.is_valid(bad), bad


def _pattern(schema: dict[str, Any]) -> re.Pattern[str]:
    """A JSON Schema pattern read by Python (``$`` at the end means the end)."""
    return re.compile(schema["pattern"].replace("$", r"\Z"))


@settings(max_examples=300)
@given(st.text(max_size=70) | st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
       | st.just("upload"))
def test_character_ids_agree_with_the_store(text: str) -> None:
    from companion_engine.patterns import SCHEMAS

    assert (_pattern(SCHEMAS["CharacterId"]).match(text) is not None) == is_valid_id(text)


def test_not_blank_is_what_strip_keeps() -> None:
    keeps = re.compile(NOT_BLANK)
    assert all((keeps.search(chr(c)) is None) == (chr(c).strip() == "")
               for c in range(sys.maxunicode + 1))


@pytest.fixture(scope="module")
def model_name() -> dict[str, Any]:
    import litellm

    from companion_engine.llm import PROVIDER_ALIASES
    from companion_engine.patterns import model_name_schema

    providers = [getattr(p, "value", p) for p in litellm.provider_list]
    return model_name_schema([*providers, *PROVIDER_ALIASES])


async def test_model_names_the_document_allows_are_accepted(model_name: dict[str, Any]) -> None:
    """Strings drawn from ``ModelName``'s pattern pass the gateway's check (no call made)."""
    pattern = _pattern(model_name)
    strategy = st.from_regex(pattern, fullmatch=True).filter(lambda s: len(s) <= 200)

    @settings(max_examples=200, database=None)
    @given(strategy)
    def draw(value: str) -> None:
        drawn.append(value)

    drawn: list[str] = []
    draw()
    for value in drawn:
        assert await validate_model(value), value
    for bad in ("nosuchprovider/x", "openai/", "openai//x", "openai/../x", "openai/.", "a b/c"):
        assert not pattern.match(bad), bad
        with pytest.raises(ModelError):
            await validate_model(bad)
    assert MODEL_NAME.match("gpt-4o") and not pattern.match("gpt-4o")  # legacy, not documented


async def test_the_voices_the_document_lists_are_spoken(make_client: Any,
                                                        make_config: Any) -> None:
    """Each voice ``BackendVoice`` lists, ``/api/tts`` speaks (the engine's own espeak-ng:
    the library is one per process)."""
    limit = {"rate_limit": {"requests": 10_000, "window_s": 60}}  # one request a voice
    client: TestClient = await make_client(make_config(profile=SPEECH, config=limit))
    spec = await (await client.get("/openapi.json")).json()
    voices = spec["components"]["schemas"]["BackendVoice"]["enum"]
    assert "en-us" in voices and all(VOICE_NAME.match(v) for v in voices)
    for voice in voices:
        resp = await client.post("/api/tts", json={"text": "a", "voice": voice})
        assert resp.status == 200, (voice, await resp.text())
        assert (await resp.read())[:4] == b"RIFF", voice
