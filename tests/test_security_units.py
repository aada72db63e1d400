"""The security building blocks on their own: limiter, client address, JSON depth, config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from companion_engine.chat.request import CHARACTER_ID, CONVERSATION_ID, MODEL_NAME
from companion_engine.config import AppConfig
from companion_engine.configload import load_config
from companion_engine.errors import ConfigError
from companion_engine.jsoninput import MAX_JSON_DEPTH, json_depth
from companion_engine.ratelimit import RateLimiter, StreamSlots, retry_after
from companion_engine.security import bearer_token, client_ip, client_key, key_matches


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- token bucket ----------------------------------------------------------------------------


def test_bucket_allows_capacity_then_refuses_with_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    assert [limiter.take("a", 3, 60) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", 3, 60)
    assert wait == pytest.approx(20.0)  # one token per 20 s
    assert retry_after(wait) == "20"
    clock.now += 20
    assert limiter.take("a", 3, 60) == 0.0
    assert limiter.take("a", 3, 60) > 0


def test_bucket_clients_are_independent() -> None:
    limiter = RateLimiter(clock=Clock())
    assert limiter.take("a", 1, 60) == 0.0
    assert limiter.take("a", 1, 60) > 0
    assert limiter.take("b", 1, 60) == 0.0


def test_bucket_refill_never_exceeds_capacity_even_after_shrinking() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    limiter.take("a", 10, 10)
    clock.now += 3600
    # A reload shrank capacity to 2: a long-idle client gets 2, not 10 or 3600.
    assert [limiter.take("a", 2, 10) for _ in range(3)][-1] > 0


def test_limiter_memory_is_bounded_lru() -> None:
    limiter = RateLimiter(max_clients=100, clock=Clock())
    limiter.take("busy", 1, 60)
    for i in range(10_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}", 1, 60)
        if i % 50 == 0:
            limiter.take("busy", 1, 60)  # recently used: kept
    assert len(limiter) == 100
    assert limiter.take("busy", 1, 60) > 0  # still remembered as exhausted


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 30)), max_size=200))
def test_bucket_never_allows_more_than_capacity_plus_refill(steps: list[tuple[int, float]]) -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    start, allowed = clock.now, 0
    for _client, dt in steps:
        clock.now += dt
        allowed += limiter.take("x", 5, 10) == 0.0
    assert allowed <= 5 + (clock.now - start) * 0.5 + 1e-9


def test_retry_after_is_whole_positive_seconds() -> None:
    assert retry_after(0.01) == "1"
    assert retry_after(1.2) == "2"


def test_stream_slots_cap_and_forget() -> None:
    slots = StreamSlots()
    assert slots.acquire("a", 2) and slots.acquire("a", 2)
    assert not slots.acquire("a", 2)
    slots.release("a")
    assert slots.acquire("a", 2)
    slots.release("a")
    slots.release("a")
    assert len(slots) == 0  # no entry left behind for a client with no stream


# --- client address --------------------------------------------------------------------------


def _req(remote: str, xff: str | None = None):  # type: ignore[no-untyped-def]
    headers = {"X-Forwarded-For": xff} if xff is not None else {}
    req = make_mocked_request("GET", "/", headers=headers)
    return req.clone(remote=remote)


def test_forwarded_for_ignored_from_untrusted_peer() -> None:
    assert client_ip(_req("203.0.113.9", "1.2.3.4"), []) == "203.0.113.9"
    assert client_ip(_req("203.0.113.9", "1.2.3.4"), ["10.0.0.0/8"]) == "203.0.113.9"


def test_forwarded_for_from_trusted_proxy_takes_rightmost_untrusted_hop() -> None:
    # The client may forge the left part; the proxy appends the real peer on the right.
    req = _req("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.5")
    assert client_ip(req, ["10.0.0.0/8"]) == "198.51.100.7"


def test_forwarded_for_garbage_falls_back_to_peer() -> None:
    assert client_ip(_req("10.0.0.2", "not-an-ip"), ["10.0.0.2"]) == "10.0.0.2"
    assert client_ip(_req("10.0.0.2", ""), ["10.0.0.2"]) == "10.0.0.2"


def test_ipv6_clients_share_their_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_ip(_req("::ffff:192.0.2.1"), []) == "192.0.2.1"


# --- API key ---------------------------------------------------------------------------------


def test_bearer_parsing_and_constant_time_compare() -> None:
    def token(value: str) -> str | None:
        return bearer_token(make_mocked_request("GET", "/", headers={"Authorization": value}))

    assert token("Bearer abc") == "abc"
    assert token("bearer  abc ") == "abc"
    assert token("Basic abc") is None
    assert token("Bearer ") is None
    assert key_matches("ключ-1", "ключ-1")
    assert not key_matches("ключ-1", "ключ-2")
    assert not key_matches("", "k")


# --- JSON depth ------------------------------------------------------------------------------


def test_json_depth() -> None:
    assert json_depth(1) == 0
    assert json_depth({"a": [1, {"b": []}]}) == 4
    deep: list = []  # built by hand: json.loads itself stops near 1000 levels
    for _ in range(5000):
        deep = [deep]
    assert json_depth(deep) == 5001
    assert json_depth(json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)) == MAX_JSON_DEPTH


# --- ids and model names --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ollama_chat/llama3.2", "openai/gpt-4o-mini", "gpt-4o",
                                  "hosted_vllm/meta-llama/Llama-3.1-8B", "ollama/qwen2.5:7b"])
def test_model_names_accepted(name: str) -> None:
    assert MODEL_NAME.match(name)


@pytest.mark.parametrize("name", ["openai/../../etc", "openai/./x", "a//b", "openai/gpt\n",
                                  "openai/..", "bad model", "/x", "..", "", "a" * 201])
def test_model_names_refused(name: str) -> None:
    assert not MODEL_NAME.match(name)


@pytest.mark.parametrize("pattern", [CHARACTER_ID, CONVERSATION_ID])
def test_ids_refuse_a_trailing_newline(pattern: re.Pattern[str]) -> None:
    assert pattern.match("abc") and not pattern.match("abc\n")


# --- config ----------------------------------------------------------------------------------


def _load(tmp_path: Path, server: dict) -> AppConfig:  # type: ignore[type-arg]
    f = tmp_path / "companion.yaml"
    f.write_text(yaml.safe_dump({"server": server}))
    return load_config(f, env={})


@pytest.mark.parametrize("server, message", [
    ({"trusted_proxies": ["10.0.0.300"]}, "not an IP address or network"),
    ({"cors_origins": ["http://localhost:5173/"]}, "no path"),
    ({"cors_origins": ["localhost:5173"]}, "not an origin"),
])
def test_bad_security_settings_are_config_errors(tmp_path: Path, server: dict,  # type: ignore[type-arg]
                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _load(tmp_path, server)
    assert "companion.yaml:" in str(err.value)


def test_origins_are_normalised(tmp_path: Path) -> None:
    config = _load(tmp_path, {"cors_origins": ["HTTP://LocalHost:5173", "*"],
                              "trusted_proxies": ["10.0.0.0/8", "::1"]})
    assert config.server.cors_origins == ["http://localhost:5173", "*"]


# --- start-up refusal, through the real CLI --------------------------------------------------


def _serve(root: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COMPANION_LOAD_PLUGINS": "", **(env or {})}
    full_env.pop("COMPANION_API_KEY", None) if env is None else None
    return subprocess.run([sys.executable, "-m", "companion_engine", "serve", "--no-reload",
                           *args], cwd=root, env=full_env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_serve_refuses_network_bind_without_api_key(tmp_path: Path, host: str) -> None:
    (tmp_path / "companion.yaml").write_text("reload: false\n")
    out = _serve(tmp_path, "--host", host, "--port", "0")
    assert out.returncode == 1
    assert f"refusing to bind {host}" in out.stderr
    assert "api_key" in out.stderr
