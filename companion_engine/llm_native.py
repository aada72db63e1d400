"""The native streaming path: the engine's own client for OpenAI-compatible and Ollama servers.

Most users run a local model behind one of two protocols: OpenAI's
``/chat/completions`` (server-sent events; llama.cpp, vLLM, LM Studio, LocalAI, ...)
and Ollama's ``/api/chat`` (NDJSON). LiteLLM speaks both, but per streamed token it
builds several pydantic objects, logs the chunk and later rebuilds the whole reply
from every chunk: several times the cost of everything else the engine does with
that token (``docs/benchmarks.md``). Here a token costs one JSON decode: the
response is read with aiohttp on the engine's shared session, parsed incrementally
(``SSEDataParser``, ``NDJSONParser``) and decoded with orjson.

The stream behaves as ``LiteLLMStream`` does: the same errors and messages
(``provider_offline``, ``provider_error``, ``timeout`` through ``classify_error``),
the same ``usage`` and ``finish_reason``, the same cap on reply characters, and
``aclose()`` drops the connection at once so the server stops generating.
``native_protocol()`` says which models take this path (``llm.native: auto``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import orjson
from loguru import logger

from companion_engine import __version__
from companion_engine.llm import (
    OLLAMA_PROVIDERS,
    LLMStream,
    ModelTarget,
    ProviderError,
    classify_error,
)

if TYPE_CHECKING:
    from companion_engine.turn import Message

Protocol = Literal["openai", "ollama"]

USER_AGENT = f"companion-engine/{__version__}"

#: A longer line than this from the provider is an error (a broken or hostile server).
MAX_LINE_BYTES = 4 * 1024 * 1024
#: Bytes of an error body kept for the message.
MAX_ERROR_BODY = 64 * 1024
#: Request parameters that only mean something to LiteLLM (never sent upstream).
LITELLM_ONLY = frozenset({"num_retries", "max_retries", "timeout", "request_timeout",
                          "custom_llm_provider", "api_base", "base_url", "api_key",
                          "api_version", "drop_params", "metadata", "mock_response",
                          "stream", "stream_options", "model", "messages"})
#: OpenAI-style parameters and their Ollama ``options`` names (as LiteLLM maps them).
OLLAMA_OPTIONS = {"max_tokens": "num_predict", "max_completion_tokens": "num_predict",
                  "frequency_penalty": "repeat_penalty"}
#: Parameters Ollama takes beside ``options`` rather than in it.
OLLAMA_TOP_LEVEL = frozenset({"format", "keep_alive", "think", "tools"})
#: Ollama ``done_reason`` values as OpenAI finish reasons.
OLLAMA_FINISH = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}


def native_protocol(target: ModelTarget) -> Protocol | None:
    """The protocol the native path speaks for ``target``, or None (LiteLLM serves it).

    ``openai/...`` with an ``api_base`` (an OpenAI-compatible server the user runs or
    names) and every ``ollama/...`` / ``ollama_chat/...`` model.
    """
    if target.provider == "openai" and target.api_base:
        return "openai"
    if target.provider in OLLAMA_PROVIDERS and target.api_base:
        return "ollama"
    return None


def chat_url(protocol: Protocol, api_base: str) -> str:
    base = api_base.rstrip("/")
    if protocol == "openai":
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"
    if base.endswith("/api/chat"):
        return base
    return f"{base}/chat" if base.endswith("/api") else f"{base}/api/chat"


def request_body(protocol: Protocol, target: ModelTarget, messages: list[Message],
                 params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and extra headers of a streaming chat request.

    ``params`` are the OpenAI-style settings LiteLLM would get (temperature,
    max_tokens, the profile's ``llm.params``, the turn's overrides); ``extra_headers``
    and ``extra_body`` work as they do with LiteLLM and the OpenAI SDK.
    """
    params = {k: v for k, v in params.items() if k not in LITELLM_ONLY and v is not None}
    headers = dict(params.pop("extra_headers", None) or {})
    extra_body = params.pop("extra_body", None) or {}
    name = target.model.split("/", 1)[1]
    if protocol == "openai":
        body = {"model": name, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, **params, **extra_body}
        return body, headers
    options: dict[str, Any] = {}
    body = {"model": name, "messages": messages, "stream": True}
    for key, value in params.items():
        if key in OLLAMA_TOP_LEVEL:
            body[key] = value
        elif key == "response_format" and isinstance(value, dict):
            if value.get("type") == "json_object":
                body["format"] = "json"
            elif (value.get("json_schema") or {}).get("schema"):
                body["format"] = value["json_schema"]["schema"]
        else:
            options[OLLAMA_OPTIONS.get(key, key)] = value
    body["options"] = options
    body.update(extra_body)
    return body, headers


class SSEDataParser:
    """``text/event-stream`` bytes in, each event's ``data`` out (fed incrementally).

    WHATWG rules for what we need: lines end in LF or CRLF, ``data:`` lines of one
    event are joined with LF, a blank line ends the event, comments and other fields
    are ignored.
    """

    __slots__ = ("_data", "_rest")

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._rest + chunk if self._rest else chunk
        lines = buf.split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > MAX_LINE_BYTES:
            raise ValueError(f"a line of more than {MAX_LINE_BYTES} bytes")
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = []
            elif line[:5] == b"data:":
                data.append(line[6:] if line[5:6] == b" " else line[5:])
        self._data = data
        return out

    def close(self) -> list[bytes]:
        """Whatever event was still open when the body ended (a missing last blank line)."""
        out = self.feed(b"\n\n") if (self._rest or self._data) else []
        return out


class NDJSONParser:
    """Newline-delimited JSON bytes in, one line (bytes, non-empty) per value out."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._rest + chunk if self._rest else chunk
        lines = buf.split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > MAX_LINE_BYTES:
            raise ValueError(f"a line of more than {MAX_LINE_BYTES} bytes")
        return [line for line in lines if line.strip()]

    def close(self) -> list[bytes]:
        rest, self._rest = self._rest, b""
        return [rest] if rest.strip() else []


def _error_detail(raw: bytes) -> str:
    """The provider's own words from an error body (OpenAI or Ollama shape), else the text."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace").strip()[:500]
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        err = err.get("message") or err
    if err is None and isinstance(doc, dict):
        err = doc.get("message") or doc.get("detail")
    return str(err if err is not None else doc)[:500]


class NativeStream(LLMStream):
    """One streaming completion over the engine's own HTTP client."""

    def __init__(self, session: aiohttp.ClientSession, protocol: Protocol, target: ModelTarget,
                 messages: list[Message], params: dict[str, Any], timeout_s: float,
                 max_chars: int | None = None) -> None:
        super().__init__(target, messages, timeout_s, max_chars)
        self.protocol = protocol
        self.session = session
        self.params = params
        self._response: aiohttp.ClientResponse | None = None
        self._ended = False

    @property
    def _where(self) -> str:
        return f"{self.target.provider} at {self.target.address}"

    async def open(self) -> None:
        assert self.target.api_base is not None
        body, headers = request_body(self.protocol, self.target, self.messages, self.params)
        key = self.target.api_key
        if key and key != "not-needed":
            headers.setdefault("Authorization", f"Bearer {key}")
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("User-Agent", USER_AGENT)
        headers.setdefault("Accept", "text/event-stream" if self.protocol == "openai"
                           else "application/x-ndjson")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s,
                                        sock_read=self.timeout_s)
        url = chat_url(self.protocol, self.target.api_base)
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await self.session.post(url, data=orjson.dumps(body), headers=headers,
                                               timeout=timeout)
                if resp.status != 200:
                    try:
                        raw = await resp.content.read(MAX_ERROR_BODY)
                    finally:
                        resp.close()
                    raise ProviderError(f"{self._where} failed: HTTP {resp.status}: "
                                        f"{_error_detail(raw)}", provider=self.target.model,
                                        status=resp.status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify_error(exc, self.target, self.timeout_s) from exc
        self._response = resp

    async def deltas(self) -> AsyncIterator[str]:
        resp = self._response
        assert resp is not None, "open() first"
        openai = self.protocol == "openai"
        parser: SSEDataParser | NDJSONParser = SSEDataParser() if openai else NDJSONParser()
        handle = self._openai_chunk if openai else self._ollama_chunk
        left = self.max_chars
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        reader = resp.content
        try:
            while True:
                data = await reader.readany()
                for item in parser.feed(data) if data else parser.close():
                    if openai and item == b"[DONE]":
                        return
                    try:
                        chunk = loads(item)
                    except decode_error:
                        logger.debug("skipping an unparseable chunk from {}: {!r}",
                                     self._where, item[:200])
                        continue
                    self.chunk_count += 1
                    text = handle(chunk)
                    if text:
                        if left is not None:
                            if len(text) > left:  # the cap: stop pulling, say why
                                self.finish_reason = "length"
                                if left:
                                    yield text[:left]
                                return
                            left -= len(text)
                        yield text
                    if self._ended:
                        return
                if not data:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify_error(exc, self.target, self.timeout_s) from exc

    def _openai_chunk(self, chunk: Any) -> str:
        """The text of one OpenAI ``chat.completion.chunk``; records finish and usage."""
        if not isinstance(chunk, dict):
            return ""
        choices = chunk.get("choices")
        text = ""
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                text = delta.get("content") or ""
            finish = choice.get("finish_reason")
            if finish:
                self.finish_reason = finish
        elif "error" in chunk:
            raise ProviderError(f"{self._where} failed: {_error_detail(orjson.dumps(chunk))}",
                                provider=self.target.model)
        usage = chunk.get("usage")
        if usage:
            self.usage = {k: usage.get(k) for k in
                          ("prompt_tokens", "completion_tokens", "total_tokens")}
        return text if isinstance(text, str) else ""

    def _ollama_chunk(self, chunk: Any) -> str:
        """The text of one Ollama ``/api/chat`` line; its final (``done``) line ends the stream."""
        if not isinstance(chunk, dict):
            return ""
        if "error" in chunk:
            raise ProviderError(f"{self._where} failed: {_error_detail(orjson.dumps(chunk))}",
                                provider=self.target.model)
        message = chunk.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        text = text if isinstance(text, str) else ""
        if chunk.get("done") is True:
            reason = chunk.get("done_reason") or "stop"
            self.finish_reason = OLLAMA_FINISH.get(reason, reason)
            prompt, completion = chunk.get("prompt_eval_count"), chunk.get("eval_count")
            if isinstance(prompt, int) and isinstance(completion, int):
                self.usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}
            self._ended = True
        return text

    async def aclose(self) -> None:
        """Drop the connection (not back to the pool) unless the body was read to its end."""
        resp, self._response = self._response, None
        if resp is None:
            return
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()
