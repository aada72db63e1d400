"""Hypothesis over the HTTP bodies: whatever arrives, the answer is a 2xx or a clear 4xx.

A live server (in a thread, real socket, scripted local LLM) gets arbitrary JSON,
JSON shaped like the real bodies with wrong or odd values, and arbitrary bytes on
every route that reads a body. No 5xx, every error in the one error shape, and
the server keeps answering.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion_engine.testing import Script
from tests.security_helpers import ThreadedServer, project_with_llm, threaded_server

KEY = "fuzz-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "openai/test-model"
FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

#: Route -> the fields its body knows.
BODY_ROUTES: dict[tuple[str, str], list[str]] = {
    ("POST", "/api/chat"): ["messages", "message", "conversation_id", "character_id", "model",
                            "enable_tts", "user_name", "greeting"],
    ("POST", "/api/chat/stream"): ["messages", "message", "conversation_id", "character_id",
                                   "enable_tts", "user_name"],
    ("POST", "/api/prompt/preview"): ["messages", "message", "character_id", "user_name"],
    ("POST", "/api/characters"): ["name", "description", "first_mes", "character_data", "spec",
                                  "data", "character_book", "extensions"],
    ("PUT", "/api/characters/aria"): ["name", "description", "first_mes", "character_data",
                                      "data", "tags"],
    ("POST", "/api/tts"): ["text", "voice"],
    ("POST", "/api/models/switch"): ["new_model", "model"],
}

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)
plausible = st.one_of(
    st.sampled_from(["hi", "", " ", "aria", "user", "User", MODEL, "a" * 300, "{{user}}",
                     "../../etc/passwd", "<script>x</script>", "\u0000", "ñ😀"]),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system",
                                                             "tool", "USER", ""]),
                                    "content": st.text(max_size=30) | json_values}),
             max_size=4),
    json_values,
)


def shaped(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(fields), plausible, max_size=len(fields))


#: Mostly-valid cards with one odd value: the paths past validation get exercised too.
cards = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=20)},
    optional={"description": st.text(max_size=50) | json_values, "first_mes": st.text(max_size=50),
              "tags": st.lists(st.text(max_size=8)) | json_values,
              "alternate_greetings": st.lists(st.text(max_size=8), max_size=3) | json_values,
              "character_book": st.fixed_dictionaries({"entries": st.lists(st.fixed_dictionaries(
                  {"keys": st.lists(st.text(max_size=8)), "content": st.text(max_size=20)}),
                  max_size=3)}) | json_values})


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    config, port = project_with_llm(
        tmp_path_factory.mktemp("fuzz"),
        config={"server": {"api_key": KEY}, "rate_limit": {"requests": 100_000, "window_s": 1}})
    with threaded_server(config, port) as server:
        assert server.llm is not None
        server.llm.default = Script(tokens=["Fine", ". ", "Thanks", "!"])
        yield server


@pytest.fixture(scope="module")
def http(live: ThreadedServer) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(AUTH)
        made = session.post(live.url + "/api/characters", timeout=10,
                            json={"name": "Aria", "description": "A test.", "first_mes": "Hi"})
        assert made.status_code in (200, 201) and made.json()["data"]["id"] == "aria", made.text
        yield session


def send(http: requests.Session, live: ThreadedServer, route: tuple[str, str],
         data: bytes, content_type: str = "application/json") -> requests.Response:
    method, path = route
    resp = http.request(method, live.url + path, data=data, timeout=30,
                        headers={"Content-Type": content_type})
    assert resp.status_code < 500, (route, data[:300], resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        body = resp.json()
        assert body["success"] is False and isinstance(body["error"], str) and body["error"]
        assert "detail" in body
    if route == ("POST", "/api/models/switch") and resp.status_code < 300:
        # Put the model back: later examples must not chat with a made-up model.
        back = http.post(live.url + path, json={"new_model": MODEL}, timeout=10)
        assert back.status_code == 200, back.text
    return resp


ROUTES = sorted(BODY_ROUTES)


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@FUZZ
@given(data=st.data())
def test_any_json_body_gets_2xx_or_clear_4xx(live: ThreadedServer, http: requests.Session,
                                              route: tuple[str, str], data: st.DataObject) -> None:
    card_route = route[1].startswith("/api/characters")
    body = data.draw(json_values | shaped(BODY_ROUTES[route]) | (cards if card_route else
                                                                 shaped(BODY_ROUTES[route])))
    send(http, live, route, json.dumps(body).encode())


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_get_2xx_or_clear_4xx(live: ThreadedServer, http: requests.Session,
                                        route: tuple[str, str], raw: bytes) -> None:
    send(http, live, route, raw)


@FUZZ
@given(raw=st.binary(max_size=2000), ctype=st.sampled_from([
    "multipart/form-data; boundary=xyz", "multipart/form-data", "application/json",
    "image/png", "text/plain"]))
def test_any_upload_gets_2xx_or_clear_4xx(live: ThreadedServer, http: requests.Session,
                                          raw: bytes, ctype: str) -> None:
    send(http, live, ("POST", "/api/characters/upload"), raw, ctype)


def test_server_still_answers_after_fuzzing(live: ThreadedServer, http: requests.Session) -> None:
    assert http.get(live.url + "/health", timeout=10).status_code == 200
    chat = http.post(live.url + "/api/chat", json={"message": "hello"}, timeout=30)
    assert chat.status_code == 200, chat.text
    assert chat.json()["content"]
