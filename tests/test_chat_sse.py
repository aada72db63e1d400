"""SSE encoding: any event data is one ``data:`` line that parses back to the same value."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.chat.openai import Completion
from companion_engine.chat.sse import encode_data, encode_event
from companion_engine.llm import (
    LLMTimeout,
    ModelTarget,
    ProviderError,
    ProviderOffline,
    classify_error,
)
from tests.chat_helpers import parse_sse

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["content", "done", "audio_ready", "error"]),
       st.dictionaries(st.text(), json_values, max_size=5))
def test_any_data_is_one_line_and_round_trips(event: str, data: dict[str, Any]) -> None:
    raw = encode_event(event, data).decode()
    assert raw.count("\n") == 3 and raw.endswith("\n\n")
    assert parse_sse(raw) == [(event, json.loads(json.dumps(data)))]


@settings(max_examples=200, deadline=None)
@given(st.text(), st.sampled_from(["companion", "companion/seraphina", "openai/gpt-4o"]))
def test_openai_content_chunk_is_the_whole_chunk_encoded(text: str, model: str) -> None:
    """A token's chunk is built from a frame encoded once: byte for byte what encoding
    the whole chunk gives (lone surrogates and quotes included), and one data line."""
    completion = Completion(model=model)
    raw = completion.content_data(text)
    assert raw == encode_data(completion.chunk({"content": text}))
    assert raw.startswith(b"data: ") and raw.count(b"\n") == 2 and raw.endswith(b"\n\n")
    assert completion.content_data(text) == raw  # the cached frame gives the same again


TARGET = ModelTarget("openai/x", "openai", "http://127.0.0.1:9/v1", "k", "local")


def _chained(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as final:
        return final


def test_errors_are_classified_by_their_cause_chain() -> None:
    offline = classify_error(_chained(RuntimeError("Connection error."),
                                      ConnectionRefusedError(111, "refused")), TARGET, 5)
    assert isinstance(offline, ProviderOffline) and "http://127.0.0.1:9/v1" in str(offline)
    assert isinstance(classify_error(_chained(RuntimeError("x"), TimeoutError()), TARGET, 5),
                      LLMTimeout)
    err = RuntimeError("boom\nsecond line")
    err.status_code = 500  # type: ignore[attr-defined]
    failed = classify_error(err, TARGET, 5)
    assert isinstance(failed, ProviderError) and failed.status == 500
    assert "second line" not in str(failed) and "boom" in str(failed)
