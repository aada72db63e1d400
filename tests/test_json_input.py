"""JSON a client sends: what Python's json cannot turn into a faithful value is a 400.

Issue 19.4: ``{"message": "hi", "n": 999...}`` with more than 4,300 digits was a 500
(``ValueError: Exceeds the limit (4300 digits)``). The same class: ``NaN``/``Infinity``,
``1e999`` (overflows to infinity), nesting past the cap, unpaired surrogates. One decoder
(``companion_engine.jsoninput``) refuses them for every body, card file and PNG chunk;
these tests send each to every place that reads client JSON.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.jsoninput import MAX_JSON_DEPTH, JSONInputError, loads
from companion_engine.lorebook.files import LorebookFiles
from tests.cards_helpers import card_png
from tests.shipped import shipped_copy

BIG = "9" * 5000

#: (name, raw JSON, a word the 400's reason must contain)
GARBAGE: list[tuple[str, str, str]] = [
    ("huge integer", '{"message": "hi", "n": ' + BIG + "}", "4300 digits"),
    ("huge negative integer", '{"message": "hi", "n": -' + BIG + "}", "4300 digits"),
    ("NaN", '{"message": "hi", "n": NaN}', "NaN"),
    ("Infinity", '{"message": "hi", "n": Infinity}', "Infinity"),
    ("-Infinity", '{"message": "hi", "n": -Infinity}', "-Infinity"),
    ("overflowing exponent", '{"message": "hi", "n": 1e999}', "out of range"),
    ("too deep", '{"message": "hi", "n": ' + "[" * 200 + "]" * 200 + "}", "nested"),
    ("deeper than recursion", '{"message": "hi", "n": ' + "[" * 5000 + "]" * 5000 + "}",
     "nested"),
    ("lone surrogate", '{"message": "hi \\ud800"}', "surrogate"),
    ("lone low surrogate in a key", '{"message": "hi", "\\udc00": 1}', "surrogate"),
    ("surrogate deep in a list", '{"message": "hi", "n": [[{"a": ["\\uDBFF"]}]]}',
     "surrogate"),
    ("not UTF-8", '{"message": "\udcff"}', "UTF-8"),
    ("truncated", '{"message": "hi"', "malformed JSON"),
]


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# --- the decoder ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text", "reason"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_decoder_refuses_with_a_reason(name: str, text: str, reason: str) -> None:
    with pytest.raises(JSONInputError, match=reason):
        loads(raw(text))


def test_decoder_keeps_what_is_fine() -> None:
    assert loads(b'{"n": 1e-999, "m": 1.5e300, "i": ' + b"9" * 4300 + b"}") == {
        "n": 0.0, "m": 1.5e300, "i": int("9" * 4300)}
    assert loads('["\\ud83d\\ude00", "\\\\ud800"]') == ["😀", "\\ud800"]  # a pair; an escape
    assert loads("\ufeff{}".encode()) == {}  # a BOM
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads(nested) is not None
    with pytest.raises(JSONInputError, match="nested"):
        loads("[" + nested + "]")


finite = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=200)
@given(finite, st.booleans())
def test_decoder_round_trips_every_faithful_value(value: Any, ascii_only: bool) -> None:
    assert loads(json.dumps(value, ensure_ascii=ascii_only)) == value


PIECES = st.sampled_from(['{"a": ', "[", "]", "}", ",", BIG, "NaN", "1e999", "-", "0", '"',
                          "\\ud800", "\\u", "tru", "e", ":", " ", "\u00ff", "\\"])


@settings(max_examples=300)
@given(st.lists(PIECES, max_size=30) | st.lists(st.text(max_size=5), max_size=10))
def test_decoder_never_raises_anything_else(pieces: list[str]) -> None:
    try:
        value = loads("".join(pieces))
    except JSONInputError as exc:
        assert exc.reason
        return
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)  # finite, encodable
    text.encode("utf-8")
    assert not (isinstance(value, float) and not math.isfinite(value))


# --- every place the server reads client JSON -------------------------------------------------


@pytest.fixture
async def client(make_client: Any, make_config: Any) -> TestClient:
    # Every body route gets every kind of garbage: more requests than the default limit.
    config = make_config(config={"rate_limit": {"requests": 10_000, "window_s": 60}})
    shipped_copy("characters/aria.yaml", config.path("characters") / "aria.yaml")
    return await make_client(config)


async def json_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every operation that declares a JSON request body, from our own /openapi.json."""
    spec = await (await client.get("/openapi.json")).json()
    found = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                found.append((method.upper(),
                              path.replace("{id}", "aria").replace("{index}", "0")))
    return found


async def assert_400(resp: aiohttp.ClientResponse, reason: str, where: str) -> None:
    body = await resp.json()
    assert resp.status == 400, (where, resp.status, body)
    if " /v1/" in where:  # the OpenAI API answers in OpenAI's error shape
        assert reason in body["error"]["message"], (where, body)
        return
    assert body["success"] is False and reason in body["error"], (where, body)


async def test_every_json_body_refuses_garbage_with_a_400(client: TestClient) -> None:
    routes = await json_routes(client)
    assert {("POST", "/api/chat"), ("POST", "/api/chat/stream"), ("POST", "/api/characters"),
            ("PUT", "/api/characters/aria"), ("POST", "/api/tts")} <= set(routes)
    for method, path in routes:
        for name, text, reason in GARBAGE:
            resp = await client.request(method, path, data=raw(text),
                                        headers={"Content-Type": "application/json"})
            await assert_400(resp, reason, f"{method} {path}: {name}")


def _upload(data: bytes, filename: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return form


async def test_card_files_and_png_chunks_refuse_garbage_with_a_400(client: TestClient) -> None:
    """Multipart uploads carry the JSON as a file part, or base64 in a PNG tEXt chunk."""
    for name, text, reason in GARBAGE:
        card = text.replace('"message": "hi"', '"name": "X", "first_mes": "hi"')
        if name == "not UTF-8" or name == "truncated":
            reason = "not UTF-8" if name == "not UTF-8" else "not valid JSON"
        resp = await client.post("/api/characters/upload", data=_upload(raw(card), "x.json"))
        await assert_400(resp, reason, f"JSON file: {name}")
        chunk = base64.b64encode(raw(card)).decode("ascii")
        resp = await client.post("/api/characters/upload",
                                 data=_upload(card_png(("chara", chunk)), "x.png"))
        await assert_400(resp, reason, f"PNG chunk: {name}")
    listing = await (await client.get("/api/characters")).json()
    assert [c["id"] for c in listing["data"]] == ["aria"]  # nothing half-stored


async def test_query_values_refuse_garbage_with_a_4xx(client: TestClient) -> None:
    """Query values are validated by pydantic, not json: huge digits, percent-encoded lone
    surrogates and bad UTF-8 are a 4xx with a reason on every route that takes a query."""
    spec = await (await client.get("/openapi.json")).json()
    cases = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                if param["in"] != "query":
                    continue
                for value in (BIG, "%ED%A0%80", "%FF", "NaN", "1e999"):
                    url = f"{path.replace('{id}', 'nobody')}?{param['name']}={value}"
                    resp = await client.request(method.upper(), url)
                    assert resp.status < 500, (method, url, resp.status, await resp.text())
                    cases += 1
    assert cases >= 10  # /api/characters/{id}/export and /api/models/switch at least
    resp = await client.post(f"/api/models/switch?new_model={BIG}")
    body = await resp.json()
    assert resp.status == 400 and body["error"], body


def test_lorebook_files_refuse_garbage_as_a_warning(tmp_path: Path) -> None:
    """World Info files come from card sites too: a bad one is an empty book with a reason,
    never an exception in the turn."""
    files = []
    for i, (_name, text, _reason) in enumerate(GARBAGE):
        path = tmp_path / f"book{i}.json"
        path.write_bytes(raw(text.replace('"message": "hi"', '"entries": {}')))
        files.append(path)
    books = LorebookFiles().load(files)
    for book, (name, _text, reason) in zip(books, GARBAGE, strict=True):
        assert book.entries == [], name
        assert "cannot parse lorebook file" in book.warnings[0], name
        assert reason in book.warnings[0] or name in ("not UTF-8", "truncated"), book.warnings
