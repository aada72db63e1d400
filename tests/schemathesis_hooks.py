"""Schemathesis hooks for ``tests/test_schemathesis.py`` (``SCHEMATHESIS_HOOKS``).

Each hook is about the test, not the API: what JSON Schema cannot say, and what
the test must not do (reach past loopback, leave the server on another model).
``before_call`` edits a generated case just before it is sent; schemathesis then
checks it again, so a case counts as valid or invalid for what is really sent.

- A rule no JSON Schema keyword expresses is made to hold (each is in the
  document's words, and the server answers it with a 4xx): the last of chat
  ``messages`` is the user's; ``character_id`` next to ``character_ids`` is one of
  them; a model switch sends ``new_model`` in the query or the body; the last of
  ``/v1/chat/completions``' messages is the user's, with text.
- A model of another provider than the scripted LLM's becomes ``openai/...``
  (still valid by the document), so no turn or probe leaves the machine;
  ``tests/test_openapi.py`` checks ``ModelName``'s providers against the gateway
  without calling one.
- After a model switch, the scripted model is switched back.
"""

from __future__ import annotations

import os
import re
from typing import Any

import requests
import schemathesis
from schemathesis.core import NotSet

SAFE_PROVIDER = "openai"
MODEL = os.environ.get("COMPANION_TEST_MODEL", "openai/test-model")
AUTH = os.environ.get("COMPANION_TEST_AUTH", "")
#: Operations whose body is a chat request (``ChatRequest``).
CHAT_BODIES = {"/api/chat", "/api/chat/stream", "/api/prompt/preview"}
SWITCHES = {"/api/models/switch", "/api/chat/switch"}
#: The /v1 model names that are not LiteLLM's ``provider/model``.
COMPANION_MODELS = ("companion", "profile")
_PROVIDER = re.compile(r"^([A-Za-z0-9_.:@+-]+)/(.+)$", re.S)
ROLES = {"system", "user", "assistant"}
OPENAI_ROLES = {"system", "developer", "user", "assistant"}


def _safe_model(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    match = _PROVIDER.match(value)
    if match is None or match.group(1) in (SAFE_PROVIDER, *COMPANION_MODELS):
        return value
    return f"{SAFE_PROVIDER}/{match.group(2)}"


def _last_is_the_users(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        role = messages[-1].get("role")
        if isinstance(role, str) and role.lower() in ROLES:
            messages[-1]["role"] = "user"


def _openai_last_is_the_users(body: dict[str, Any]) -> None:
    """/v1: the last message is the user's, with text (a string, or text parts)."""
    messages = body.get("messages")
    if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)):
        return
    last = messages[-1]
    role = last.get("role")
    if isinstance(role, str) and role in OPENAI_ROLES:
        last["role"] = "user"
    content = last.get("content")
    if content is None or (isinstance(content, str) and not content.strip()):
        last["content"] = "Hello"
    elif isinstance(content, list) and all(isinstance(p, dict) for p in content) and not "".join(
            p["text"] for p in content if isinstance(p.get("text"), str)).strip():
        last["content"] = [*content, {"type": "text", "text": "Hello"}]


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    path, body = case.operation.path, case.body
    if isinstance(body, dict):
        for key in ("model", "new_model"):
            if key in body:
                body[key] = _safe_model(body[key])
        if path in CHAT_BODIES:
            _last_is_the_users(body)
        if path == "/v1/chat/completions":
            _openai_last_is_the_users(body)
        ids, one = body.get("character_ids"), body.get("character_id")
        if path == "/api/conversations" and isinstance(ids, list) and ids \
                and isinstance(one, str) and one not in ids:
            body["character_id"] = ids[0]
    if isinstance(case.query, dict) and "new_model" in case.query:
        case.query["new_model"] = _safe_model(case.query["new_model"])
    if path in SWITCHES and isinstance(body, NotSet) and not (
            case.query and "new_model" in case.query):
        case.body = {"new_model": MODEL}


@schemathesis.hook
def after_call(ctx: Any, case: Any, response: Any) -> None:
    if case.operation.path in SWITCHES and response.status_code == 200:
        base = (case.operation.base_url or "").rstrip("/")
        headers = {"Authorization": AUTH} if AUTH else {}
        back = requests.post(f"{base}/api/models/switch", json={"new_model": MODEL},
                             headers=headers, timeout=10)
        assert back.status_code == 200, back.text
