"""The LLM gateway: every provider LiteLLM knows, streamed, behind one small API.

LiteLLM takes seconds (and ~200 MB) to import, so it is imported only when a model
needs it: models on the native client (``llm_native``: OpenAI-compatible servers
with an ``api_base``, Ollama) never do. When the profile names a model that does,
the app starts ``start_background_import()`` at start-up and the first such turn
awaits ``get_litellm()``. The gateway reads ``engine.profile.llm`` on every call, so a
profile reload takes effect on the next turn. Provider failures come out as one
of three ``LLMError`` types whose ``type`` is the SSE ``error`` type:
``provider_offline`` (cannot connect; the message names the address),
``provider_error`` (the provider answered with an error or broke mid-stream) and
``timeout`` (no answer within ``llm.timeout_s``).
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import gc
import importlib
import importlib.util
import ipaddress
import os
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import aiohttp
from loguru import logger

from companion_engine.errors import TurnError
from companion_engine.patterns import MODEL_NAME

if TYPE_CHECKING:
    from companion_engine.config import LLMConfig
    from companion_engine.engine import Engine
    from companion_engine.turn import Message, Turn

# LiteLLM would otherwise fetch its model cost map from GitHub at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ProviderType = Literal["local", "cloud"]

#: Old or friendlier provider prefixes, rewritten before LiteLLM sees them.
#: ``ollama/`` (the generate API) becomes ``ollama_chat/`` so chat templates apply.
PROVIDER_ALIASES = {"lmstudio": "lm_studio", "ollama": "ollama_chat"}
OLLAMA_PROVIDERS = frozenset({"ollama", "ollama_chat"})
#: Providers that run on the user's machine or network.
LOCAL_PROVIDERS = frozenset({*OLLAMA_PROVIDERS, "lm_studio", "hosted_vllm", "llamafile",
                             "vllm", "xinference", "oobabooga"})
#: Providers whose servers list models at ``{api_base}/models`` (OpenAI style).
OPENAI_LISTING = frozenset({"lm_studio", "hosted_vllm", "llamafile", "openai"})
#: Where local providers listen when neither the profile nor the environment says.
DEFAULT_API_BASES = {
    "ollama_chat": ("OLLAMA_API_BASE", "http://localhost:11434"),
    "lm_studio": ("LM_STUDIO_API_BASE", "http://localhost:1234/v1"),
}
#: Cloud providers offered by ``/api/models`` when their key is in the environment.
CLOUD_PROVIDERS: dict[str, tuple[str, str, list[str]]] = {
    "openai": ("OPENAI_API_KEY", "https://api.openai.com/v1", ["gpt-4o", "gpt-4o-mini"]),
    "anthropic": ("ANTHROPIC_API_KEY", "https://api.anthropic.com/v1",
                  ["claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022"]),
}
#: Seconds a reachability probe may take (``/api/models``, ``/api/models/status``).
PROBE_TIMEOUT_S = 2.0


# --- the lazy import --------------------------------------------------------------------------

_import_lock = threading.Lock()
_import_future: concurrent.futures.Future[ModuleType] | None = None


def _import_litellm(future: concurrent.futures.Future[ModuleType]) -> None:
    try:
        started = time.perf_counter()
        module = importlib.import_module("litellm")
        _configure(module)
        if gc.get_freeze_count():
            # The server froze its start-up heap (``companion serve``): freeze LiteLLM's
            # too, so no garbage collection walks its ~200 MB again.
            gc.freeze()
        logger.debug("litellm imported in {:.0f} ms", (time.perf_counter() - started) * 1000)
        future.set_result(module)
    except BaseException as exc:  # surfaced to whoever awaits get_litellm()
        future.set_exception(exc)


def _configure(litellm: Any) -> None:
    """Quiet, offline, no retries: the gateway reports failures itself."""
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    litellm.drop_params = True  # e.g. stream_options for providers without it
    litellm.num_retries = 0


def start_background_import() -> None:
    """Import LiteLLM in a daemon thread (idempotent); the server starts without waiting."""
    global _import_future
    with _import_lock:
        if _import_future is not None:
            return
        _import_future = concurrent.futures.Future()
        threading.Thread(target=_import_litellm, args=(_import_future,), name="litellm-import",
                         daemon=True).start()


async def get_litellm() -> ModuleType:
    """The LiteLLM module, awaiting the background import (starting it if needed)."""
    module = sys.modules.get("litellm")
    if module is not None and _import_future is not None and _import_future.done():
        return module
    start_background_import()
    assert _import_future is not None
    # shield: a turn cancelled while waiting must not cancel the import for everyone
    return await asyncio.shield(asyncio.wrap_future(_import_future))


_providers: list[str] | None = None

#: The enum LiteLLM's ``provider_list`` is made of, as its source spells it.
_PROVIDER_ENUM = re.compile(r"^class LlmProviders\(.*?(?=^\S)", re.MULTILINE | re.DOTALL)


async def litellm_providers() -> list[str]:
    """The provider names LiteLLM knows (``litellm.provider_list``).

    While LiteLLM is not imported they are read from its source (the ``LlmProviders``
    enum, ~1 ms) so that listing them (``/openapi.json``, ``/docs``) does not cost a
    native-only server LiteLLM's import (seconds, ~200 MB); from the module once it is
    imported, or when its source cannot be read that way.
    """
    global _providers
    if _providers is None:
        if "litellm" not in sys.modules:
            _providers = await asyncio.to_thread(_providers_from_source)
        if not _providers:
            litellm = await get_litellm()
            _providers = [str(getattr(p, "value", p)) for p in litellm.provider_list]
    return _providers


def _providers_from_source() -> list[str] | None:
    """The ``LlmProviders`` values from LiteLLM's ``types/utils.py``, without importing it;
    None when the file or the enum is not where this LiteLLM release was seen to keep it."""
    try:
        spec = importlib.util.find_spec("litellm")
        if spec is None or not spec.submodule_search_locations:
            return None
        source = (Path(next(iter(spec.submodule_search_locations))) / "types" / "utils.py"
                  ).read_text(encoding="utf-8")
        block = _PROVIDER_ENUM.search(source)
        if block is None:
            return None
        names = [node.value.value for node in ast.parse(block.group()).body[0].body
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                 and isinstance(node.value.value, str)]
    except (OSError, SyntaxError, ValueError, IndexError, AttributeError) as exc:
        logger.debug("LiteLLM's providers are not readable from its source: {}", exc)
        return None
    return names or None


# --- errors -----------------------------------------------------------------------------------


class LLMError(TurnError):
    """A provider failure; ``type`` is the SSE ``error`` event type."""

    type: str = "provider_error"

    def __init__(self, message: str, *, provider: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status


class ProviderOffline(LLMError):
    type = "provider_offline"


class ProviderError(LLMError):
    type = "provider_error"


class LLMTimeout(LLMError):
    type = "timeout"


class ModelError(ValueError):
    """A model string that is malformed or names a provider LiteLLM does not know."""


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 20:
        chain.append(current)
        original = getattr(current, "original_exception", None)
        nxt = current.__cause__ or current.__context__
        current = original if isinstance(original, BaseException) else nxt
    return chain


def _is_connect_failure(e: BaseException) -> bool:
    name = type(e).__name__
    return isinstance(e, ConnectionRefusedError | socket.gaierror) or name in (
        "ConnectError", "ConnectTimeout", "ClientConnectorError", "ClientConnectorDNSError")


def _is_timeout(e: BaseException) -> bool:
    return isinstance(e, TimeoutError) or type(e).__name__ in (
        "Timeout", "APITimeoutError", "ReadTimeout", "TimeoutException", "ServerTimeoutError")


def classify_error(exc: BaseException, target: ModelTarget, timeout_s: float) -> LLMError:
    """Map whatever LiteLLM raised to ``provider_offline``, ``timeout`` or ``provider_error``."""
    if isinstance(exc, LLMError):
        return exc
    chain = _exception_chain(exc)
    where = f"{target.provider} at {target.address}"
    if any(_is_connect_failure(e) for e in chain):
        root = chain[-1]
        return ProviderOffline(f"cannot reach {where}: {type(root).__name__}: {root}",
                               provider=target.model)
    if any(_is_timeout(e) for e in chain):
        return LLMTimeout(f"no answer from {where} within {timeout_s:g} s",
                          provider=target.model)
    status = next((s for e in chain if isinstance(s := getattr(e, "status_code", None), int)),
                  None)
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    detail = text[0][:500] if text else type(exc).__name__
    return ProviderError(f"{where} failed: {detail}", provider=target.model, status=status)


# --- which provider a model string means ------------------------------------------------------


def _is_local_address(api_base: str | None) -> bool:
    host = urlsplit(api_base).hostname if api_base else None
    if not host:
        return False
    if host == "localhost" or host.endswith((".local", ".lan", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def split_model(model: str) -> tuple[str, str]:
    """``(provider, name)`` with aliases applied; no prefix means ``openai`` (as before)."""
    provider, sep, name = model.partition("/")
    if not sep:
        return "openai", model
    return PROVIDER_ALIASES.get(provider, provider), name


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """A model string resolved against the profile: what LiteLLM is called with."""

    model: str
    provider: str
    api_base: str | None
    api_key: str | None
    type: ProviderType

    @property
    def address(self) -> str:
        if self.api_base:
            return self.api_base
        cloud = CLOUD_PROVIDERS.get(self.provider)
        return cloud[1] if cloud else f"the {self.provider} API"


def resolve_model(model: str, llm: LLMConfig) -> ModelTarget:
    """Where ``model`` is served: the profile's ``api_base``/``api_key`` apply to its provider."""
    provider, name = split_model(model)
    profile_provider, _ = split_model(llm.model)
    api_base, api_key = (llm.api_base, llm.api_key) if provider == profile_provider else (None,
                                                                                           None)
    if api_base is None and provider in DEFAULT_API_BASES:
        env, default = DEFAULT_API_BASES[provider]
        api_base = os.environ.get(env) or default
    local = provider in LOCAL_PROVIDERS or _is_local_address(api_base)
    if api_key is None and local:
        api_key = "not-needed"  # OpenAI-compatible clients insist on some key
    return ModelTarget(model=f"{provider}/{name}", provider=provider, api_base=api_base,
                       api_key=api_key, type="local" if local else "cloud")


#: Providers the engine knows itself (all LiteLLM's too): their models are validated
#: without importing LiteLLM.
KNOWN_PROVIDERS = frozenset({"openai", "anthropic", *LOCAL_PROVIDERS})


async def validate_model(model: str) -> str:
    """Check the format and that the provider is known; return the normalised string.

    Models of ``KNOWN_PROVIDERS`` are checked without LiteLLM (a native-only server
    never imports it); other providers are checked against LiteLLM's list, and a name
    without a provider is resolved by LiteLLM.
    """
    if not isinstance(model, str) or not MODEL_NAME.match(model):
        raise ModelError(f"invalid model name {model!r}: use provider/model, e.g. "
                         "ollama_chat/llama3.2 or openai/gpt-4o-mini "
                         "(letters, digits and / _ . : @ + -)")
    provider, name = split_model(model)
    if not name:
        raise ModelError(f"invalid model name {model!r}: the model part after '/' is empty")
    if "/" in model and provider in KNOWN_PROVIDERS:
        return f"{provider}/{name}"
    litellm = await get_litellm()
    if "/" not in model:
        try:
            provider = litellm.get_llm_provider(model)[1]
        except Exception:
            raise ModelError(f"cannot tell the provider of {model!r}; write it as "
                             "provider/model (e.g. ollama_chat/llama3.2)") from None
        return f"{provider}/{model}"
    if provider not in await litellm_providers():
        raise ModelError(f"unknown provider {provider!r} in {model!r}; known include "
                         "ollama_chat, openai, anthropic, lm_studio, hosted_vllm")
    return f"{provider}/{name}"


# --- one streamed completion ------------------------------------------------------------------


class LLMStream:
    """One streaming completion: ``open()`` it, iterate ``deltas()``, always ``aclose()``.

    ``usage``, ``finish_reason`` and ``chunk_count`` fill in as the stream runs. Two
    implementations: ``LiteLLMStream`` (every provider) and
    ``companion_engine.llm_native.NativeStream`` (OpenAI-compatible and Ollama servers).
    Both stop at ``max_chars`` characters of reply with ``finish_reason = "length"``.
    """

    def __init__(self, target: ModelTarget, messages: list[Message], timeout_s: float,
                 max_chars: int | None = None) -> None:
        self.target = target
        self.messages = messages
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.chunk_count = 0

    @property
    def path(self) -> str:
        """``litellm`` or ``native``: which client serves this stream."""
        return "litellm"

    async def open(self) -> None:
        """Send the request; returns once the provider answered with a stream."""
        raise NotImplementedError

    def deltas(self) -> AsyncIterator[str]:
        """The reply's text pieces as they arrive (empty pieces skipped)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the HTTP response: the provider sees the connection end and stops."""
        raise NotImplementedError


class LiteLLMStream(LLMStream):
    """A streaming completion through ``litellm.acompletion``."""

    def __init__(self, target: ModelTarget, messages: list[Message], kwargs: dict[str, Any],
                 timeout_s: float, max_chars: int | None = None) -> None:
        super().__init__(target, messages, timeout_s, max_chars)
        self.kwargs = kwargs
        self._response: Any = None

    async def open(self) -> None:
        litellm = await get_litellm()
        if self.target.provider in OLLAMA_PROVIDERS:
            _register_local_model(litellm, self.target.model)
        # The read timeout goes in globally: a per-call ``timeout`` makes LiteLLM build a
        # fresh client whose streaming costs ~80 µs more per token (benchmarks/chat_micro).
        litellm.request_timeout = self.timeout_s
        try:
            async with asyncio.timeout(self.timeout_s):
                self._response = await litellm.acompletion(
                    model=self.target.model, messages=self.messages, stream=True, **self.kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify_error(exc, self.target, self.timeout_s) from exc

    async def deltas(self) -> AsyncIterator[str]:
        assert self._response is not None, "open() first"
        left = self.max_chars
        try:
            async for chunk in self._response:
                self.chunk_count += 1
                choices = chunk.choices
                if choices:
                    choice = choices[0]
                    text = choice.delta.content
                    if text:
                        if left is not None:
                            if len(text) > left:  # the cap: stop pulling, say why
                                self.finish_reason = "length"
                                if left:
                                    yield text[:left]
                                return
                            left -= len(text)
                        yield text
                    finish = choice.finish_reason
                    if not finish:
                        continue  # usage comes with the last chunks only (saves ~2 µs/token)
                    self.finish_reason = finish
                usage = getattr(chunk, "usage", None)
                if usage:
                    self.usage = _usage_dict(usage)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify_error(exc, self.target, self.timeout_s) from exc

    async def aclose(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            try:
                await response.aclose()
            except Exception as exc:  # closing a broken stream must not mask the real error
                logger.debug("closing the LLM stream failed: {}", exc)


def reply_char_cap(llm: LLMConfig, max_tokens: Any = None) -> int:
    """Characters of reply a turn may stream: ``llm.max_reply_chars``, else 16 per
    ``max_tokens`` (the turn's, else the profile's; a token is about 4 characters: 4x
    headroom), at least 8,000."""
    if llm.max_reply_chars:
        return llm.max_reply_chars
    tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else llm.max_tokens
    return max(8_000, 16 * tokens)


def _usage_dict(usage: Any) -> dict[str, Any]:
    get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k, None)
    return {k: get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _register_local_model(litellm: Any, model: str) -> None:
    """Give Ollama models a zero-cost entry in LiteLLM's cost map.

    Without one, LiteLLM's success logging asks Ollama's ``/api/show`` with a
    *blocking* HTTP call on the event loop after every streamed reply.
    """
    if model not in litellm.model_cost:
        litellm.model_cost[model] = {"litellm_provider": "ollama_chat", "mode": "chat",
                                     "input_cost_per_token": 0.0, "output_cost_per_token": 0.0}


# --- the gateway ------------------------------------------------------------------------------


@dataclass(slots=True)
class ProviderStatus:
    """One provider as ``/api/models/status`` reports it."""

    name: str
    type: ProviderType
    api_base: str | None
    connected: bool
    models: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "api_base": self.api_base,
                "connected": self.connected, "models": [m["name"] for m in self.models],
                "error": self.error, "latency_ms": self.latency_ms}


class LLMGateway:
    """Streams completions and lists models for the engine's current profile."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def target(self, model: str | None = None) -> ModelTarget:
        return resolve_model(model or self.engine.active_model, self.engine.profile.llm)

    def stream(self, turn: Turn) -> LLMStream:
        """A not-yet-opened streaming completion of ``turn.messages``.

        Everything comes from the turn (its leased profile's ``llm`` settings, its
        model, its ``llm_params`` overrides), never from the engine's current
        profile: a reload during the turn cannot mix two configurations. The native
        client serves it when ``llm.native`` is ``auto`` and the model runs on an
        OpenAI-compatible server with an ``api_base`` or on Ollama; LiteLLM serves
        everything else.
        """
        llm = turn.profile.llm
        target = resolve_model(turn.model or llm.model, llm)
        params: dict[str, Any] = {"temperature": llm.temperature, "max_tokens": llm.max_tokens,
                                  **llm.params, **turn.llm_params}
        max_chars = reply_char_cap(llm, params.get("max_tokens"))
        protocol = self.native_protocol(target, llm)
        if protocol is not None:
            from companion_engine.llm_native import NativeStream

            return NativeStream(self.engine.http, protocol, target, turn.messages, params,
                                llm.timeout_s, max_chars)
        kwargs: dict[str, Any] = {"num_retries": 0, "max_retries": 0,
                                  "stream_options": {"include_usage": True}, **params}
        if target.api_base:
            kwargs["api_base"] = target.api_base
        if target.api_key:
            kwargs["api_key"] = target.api_key
        return LiteLLMStream(target, turn.messages, kwargs, llm.timeout_s, max_chars)

    def needs_litellm(self) -> bool:
        """Whether a model the engine may use now (the profile's, a switched one) runs
        through LiteLLM: then its import starts in the background."""
        llm = self.engine.profile.llm
        models = dict.fromkeys((llm.model, self.engine.active_model))
        return any(self.native_protocol(resolve_model(m, llm), llm) is None for m in models)

    def native_protocol(self, target: ModelTarget, llm: LLMConfig | None = None) -> str | None:
        """``openai``/``ollama`` when the native client serves ``target`` under ``llm``
        (default: the current profile's settings), else None."""
        if (llm or self.engine.profile.llm).native == "off":
            return None
        from companion_engine.llm_native import native_protocol

        return native_protocol(target)

    # --- listing and reachability ---------------------------------------------------------

    def _providers(self) -> list[tuple[str, str, str | None, str | None]]:
        """(provider, listing kind, api_base, api_key) for each configured provider."""
        seen: set[tuple[str, str | None]] = set()
        out: list[tuple[str, str, str | None, str | None]] = []

        def add(provider: str, api_base: str | None, api_key: str | None) -> None:
            kind = _listing_kind(provider)
            key = (provider, (api_base or "").rstrip("/"))
            if kind and key not in seen:
                seen.add(key)
                out.append((provider, kind, api_base, api_key))

        llm = self.engine.profile.llm
        for model in dict.fromkeys((llm.model, self.engine.active_model)):
            t = resolve_model(model, llm)
            if t.type == "local":
                add(t.provider, t.api_base, t.api_key)
            elif t.api_key:  # a cloud provider with a key in the profile
                add(t.provider, t.api_base or CLOUD_PROVIDERS.get(t.provider, ("", None))[1],
                    t.api_key)
        for provider, (env, _default) in DEFAULT_API_BASES.items():
            if os.environ.get(env):
                add(provider, os.environ[env], None)
        for provider, (env, base, _models) in CLOUD_PROVIDERS.items():
            if os.environ.get(env):
                add(provider, base, os.environ[env])
        return out

    async def probe_model(self, model: str) -> ProviderStatus | None:
        """Reachability of the provider serving ``model`` (None: cannot be probed)."""
        t = resolve_model(model, self.engine.profile.llm)
        kind = _listing_kind(t.provider)
        if not kind:
            return None
        if t.type == "cloud":
            env, base, _models = CLOUD_PROVIDERS.get(t.provider, ("", None, []))
            key = t.api_key or (os.environ.get(env) if env else None)
            if not key:
                hint = env or "llm.api_key"
                return ProviderStatus(t.provider, "cloud", t.api_base or base, connected=False,
                                      error=f"no API key for {t.provider} (set {hint})")
            return await self._probe(t.provider, kind, t.api_base or base, key)
        return await self._probe(t.provider, kind, t.api_base, t.api_key)

    async def _probe(self, provider: str, kind: str, api_base: str | None,
                     api_key: str | None) -> ProviderStatus:
        base = (api_base or "").rstrip("/")
        headers: dict[str, str] = {}
        if kind == "ollama":
            url = f"{base}/api/tags"
        else:
            url = f"{base}/models"
            if kind == "anthropic" and api_key:
                headers = {"x-api-key": api_key, "anthropic-version": "2023-06-01"}
            elif api_key and api_key != "not-needed":
                headers = {"Authorization": f"Bearer {api_key}"}
        ptype: ProviderType = "local" if (provider in LOCAL_PROVIDERS
                                          or _is_local_address(api_base)) else "cloud"
        status = ProviderStatus(provider, ptype, api_base, connected=False)
        started = time.perf_counter()
        try:
            async with self.engine.http.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S),
            ) as resp:
                if resp.status != 200:
                    status.error = f"{url} answered HTTP {resp.status}"
                    return status
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            status.error = f"cannot reach {url}: {type(exc).__name__}: {exc}".rstrip(": ")
            return status
        finally:
            status.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        status.connected = True
        status.models = _listed_models(provider, kind, ptype, data)
        return status

    async def status(self) -> list[ProviderStatus]:
        """Probe every configured provider at once, each within ``PROBE_TIMEOUT_S``."""
        return list(await asyncio.gather(*(self._probe(*p) for p in self._providers())))

    async def list_models(self) -> list[dict[str, Any]]:
        """Models the reachable configured providers offer."""
        return [m for s in await self.status() for m in s.models]


def _listing_kind(provider: str) -> str:
    """How a provider lists its models: ``ollama``, ``openai``, ``anthropic`` or ``""``."""
    if provider in OLLAMA_PROVIDERS:
        return "ollama"
    if provider in OPENAI_LISTING:
        return "openai"
    return "anthropic" if provider == "anthropic" else ""


def _listed_models(
    provider: str, kind: str, ptype: ProviderType, data: Any,
) -> list[dict[str, Any]]:
    """Model entries from an Ollama ``/api/tags`` or OpenAI-style ``/models`` answer."""
    if not isinstance(data, dict):
        return []
    models: list[dict[str, Any]] = []
    if kind == "ollama":
        for m in data.get("models") or []:
            if isinstance(m, dict) and isinstance(m.get("name"), str):
                models.append({"name": f"ollama_chat/{m['name']}", "provider": "ollama",
                               "size": m.get("size"), "type": ptype})
        return models
    for m in data.get("data") or []:
        if isinstance(m, dict) and isinstance(m.get("id"), str):
            models.append({"name": f"{provider}/{m['id']}", "provider": provider, "type": ptype})
    if kind == "anthropic" and not models:
        models = [{"name": f"anthropic/{n}", "provider": "anthropic", "type": ptype}
                  for n in CLOUD_PROVIDERS["anthropic"][2]]
    return models
