"""A scripted local LLM server for tests: OpenAI streaming and Ollama, over real HTTP.

It speaks ``POST /v1/chat/completions`` (SSE when ``stream`` is true, JSON otherwise),
``GET /v1/models``, Ollama's ``POST /api/chat`` (NDJSON) and ``GET /api/tags``, and
OpenAI's speech-to-text ``POST /v1/audio/transcriptions`` (multipart in; ``json``,
``verbose_json`` with word times, or ``text`` out), scripted with ``push_transcript``.
Each chat request consumes the next queued ``Script`` (or the default one), so a
test says exactly what the "model" does: which tokens, how fast, whether it
fails, sends garbage, hangs or drops the connection. Every chat request is
recorded with the time each token was sent and the time the client connection
closed, so tests can prove that a client going away cancels the upstream request
(and benchmarks can compare the gaps a client sees with the gaps the server made).

Usage (with the ``companion_engine.testing`` pytest plugin, which provides the
``llm_server`` fixture)::

    from companion_engine.testing import Script

    async def test_x(llm_server):
        llm_server.push(Script(tokens=["Hi", " there", "."], delay_s=0.01))
        ... model "openai/test" with api_base=llm_server.openai_base ...
        rec = llm_server.requests[-1]
        await rec.wait_closed(1.0)

Out of process (benchmarks, clients in other languages), with a small control API
under ``/_scripted/`` (push scripts, set the default, read and clear the records)::

    python -m companion_engine.testing.llmserver --port 0   # prints "listening on URL"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import BodyPartReader, web


@dataclass
class Script:
    """What the fake model does for one chat request."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", " there", "!"])
    #: Seconds before the first token (after the response headers).
    first_delay_s: float = 0.0
    #: Seconds between tokens.
    delay_s: float = 0.0
    #: Answer with this HTTP status and an error body instead of streaming.
    status: int = 200
    error_message: str = "scripted failure"
    #: Seconds to wait before sending the response headers (a slow provider).
    headers_delay_s: float = 0.0
    #: Insert an unparseable chunk before token i (index into ``tokens``).
    garbage_at: int | None = None
    garbage: str = "{this is not json"
    #: After this many tokens, stop sending anything but keep the connection open.
    hang_after: int | None = None
    #: After this many tokens, drop the connection without finishing the stream.
    drop_after: int | None = None
    #: Send a usage block at the end (OpenAI: when ``stream_options.include_usage``).
    usage: bool = True
    finish_reason: str = "stop"


@dataclass
class TranscriptScript:
    """What the fake speech-to-text server answers for one transcription request."""

    text: str = "Hello there."
    #: As OpenAI sends it in ``verbose_json`` (a name; some servers send a code).
    language: str = "english"
    #: ``(word, start_s, end_s)``; None: the text's words spread evenly over the audio.
    words: list[tuple[str, float, float]] | None = None
    #: Seconds before answering.
    delay_s: float = 0.0
    #: Answer with this HTTP status and an OpenAI error body instead.
    status: int = 200
    error_message: str = "scripted failure"
    #: Send exactly these bytes (as JSON) instead of a real answer.
    raw_body: bytes | None = None


@dataclass
class RecordedTranscription:
    """One transcription request: the form fields and the uploaded file."""

    fields: dict[str, list[str]]
    file: bytes
    filename: str | None
    content_type: str | None
    started_at: float

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


@dataclass
class RecordedRequest:
    """One chat request as the server saw it."""

    path: str
    body: dict[str, Any]
    started_at: float
    closed_at: float | None = None
    #: True when the whole scripted stream was sent.
    completed: bool = False
    #: ``time.perf_counter()`` right after each token was written (one per token).
    sent_at: list[float] = field(default_factory=list)
    #: The request's headers (names lower-cased).
    headers: dict[str, str] = field(default_factory=dict)
    #: The client's (host, port): one per connection, so reuse shows.
    peer: tuple[str, int] | None = None
    _closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def wait_closed(self, within: float) -> float:
        """Wait until the connection of this request ended; return ``closed_at``."""
        await asyncio.wait_for(self._closed.wait(), within)
        assert self.closed_at is not None
        return self.closed_at

    def mark_closed(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.perf_counter()
            self._closed.set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LLMTestServer:
    """The scripted server; start with ``await LLMTestServer.start()``."""

    def __init__(self) -> None:
        self.scripts: deque[Script] = deque()
        self.default = Script()
        self.transcript_scripts: deque[TranscriptScript] = deque()
        self.default_transcript = TranscriptScript()
        self.transcriptions: list[RecordedTranscription] = []
        self.requests: list[RecordedRequest] = []
        self.models = ["test-model", "other-model"]
        #: Size of the ``/v1/embeddings`` vectors, and every text embedded so far.
        self.dimensions = 64
        self.embedded: list[str] = []
        #: Status for ``/v1/models`` and ``/api/tags`` (set 500 to simulate a sick provider).
        self.listing_status = 200
        self.runner: web.AppRunner | None = None
        self.port = 0

    # --- scripting ------------------------------------------------------------------------

    def push(self, *scripts: Script) -> None:
        """Queue scripts; each chat request takes the next one (then the default)."""
        self.scripts.extend(scripts)

    def _next_script(self) -> Script:
        return self.scripts.popleft() if self.scripts else self.default

    def push_transcript(self, *scripts: TranscriptScript) -> None:
        """Queue transcription answers; each request takes the next (then the default)."""
        self.transcript_scripts.extend(scripts)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        """``api_base`` for ``openai/...`` models."""
        return f"{self.url}/v1"

    @property
    def stt_base(self) -> str:
        """``base_url`` for the ``openai`` STT backend (``/v1/audio/transcriptions``)."""
        return f"{self.url}/v1"

    @property
    def ollama_base(self) -> str:
        """``api_base`` for ``ollama_chat/...`` models."""
        return self.url

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def start(cls, port: int = 0, *, host: str = "127.0.0.1",
                    control: bool = False) -> LLMTestServer:
        """Listen on ``host:port`` (0: a free port); ``control`` adds the ``/_scripted/`` API."""
        server = cls()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", server._openai_chat)
        app.router.add_get("/v1/models", server._openai_models)
        app.router.add_post("/v1/embeddings", server._openai_embeddings)
        app.router.add_post("/api/chat", server._ollama_chat)
        app.router.add_get("/api/tags", server._ollama_tags)
        app.router.add_post("/v1/audio/transcriptions", server._transcribe)
        if control:
            app.router.add_post("/_scripted/push", server._control_push)
            app.router.add_put("/_scripted/default", server._control_default)
            app.router.add_get("/_scripted/requests", server._control_requests)
            app.router.add_delete("/_scripted/requests", server._control_clear)
        # handler_cancellation: a client that goes away cancels the handler at once,
        # which is how the server notices (and records) the close promptly.
        server.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await server.runner.setup()
        site = web.TCPSite(server.runner, host, port or free_port())
        await site.start()
        server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return server

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # --- the protocols --------------------------------------------------------------------

    async def _record(self, request: web.Request) -> tuple[RecordedRequest, Script]:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        rec = RecordedRequest(request.path, body, time.perf_counter(),
                              headers={k.lower(): v for k, v in request.headers.items()},
                              peer=request.transport.get_extra_info("peername")[:2]
                              if request.transport else None)
        self.requests.append(rec)
        return rec, self._next_script()

    async def _play(
        self, script: Script, rec: RecordedRequest, resp: web.StreamResponse,
        encode: Any, finish: Any,
    ) -> None:
        """Send the scripted tokens through ``encode(token) -> bytes``, then ``finish()``."""
        if script.first_delay_s:
            await asyncio.sleep(script.first_delay_s)
        for i, token in enumerate(script.tokens):
            if script.garbage_at == i:
                await resp.write(script.garbage.encode())
            if script.hang_after is not None and i >= script.hang_after:
                await asyncio.Event().wait()  # until the client gives up
            if script.drop_after is not None and i >= script.drop_after:
                assert resp._req is not None  # type: ignore[attr-defined]
                transport = resp._req.transport  # type: ignore[attr-defined]
                if transport is not None:
                    transport.abort()
                return
            if i and script.delay_s:
                await asyncio.sleep(script.delay_s)
            await resp.write(encode(token))
            rec.sent_at.append(time.perf_counter())
        await resp.write(finish())
        rec.completed = True

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        rec, script = await self._record(request)
        try:
            if script.headers_delay_s:
                await asyncio.sleep(script.headers_delay_s)
            if script.status != 200:
                return web.json_response(
                    {"error": {"message": script.error_message, "type": "server_error",
                               "code": script.status}}, status=script.status)
            model = rec.body.get("model", "test-model")
            if not rec.body.get("stream"):
                text = "".join(script.tokens)
                rec.completed = True
                return web.json_response(_openai_completion(model, text, rec.body))
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            want_usage = bool((rec.body.get("stream_options") or {}).get("include_usage"))

            @_memo
            def encode(token: str) -> bytes:
                return _sse(_openai_chunk(model, {"content": token}, None))

            def finish() -> bytes:
                out = _sse(_openai_chunk(model, {}, script.finish_reason))
                if want_usage and script.usage:
                    chunk = _openai_chunk(model, None, None)
                    chunk["usage"] = _usage(rec.body, script.tokens)
                    out += _sse(chunk)
                return out + b"data: [DONE]\n\n"

            await self._play(script, rec, resp, encode, finish)
            await resp.write_eof()
            return resp
        finally:
            rec.mark_closed()

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        rec, script = await self._record(request)
        try:
            if script.headers_delay_s:
                await asyncio.sleep(script.headers_delay_s)
            if script.status != 200:
                return web.json_response({"error": script.error_message}, status=script.status)
            model = rec.body.get("model", "test-model")
            if rec.body.get("stream") is False:
                rec.completed = True
                return web.json_response(_ollama_chunk(model, "".join(script.tokens), True,
                                                       rec.body, script))
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)

            @_memo
            def encode(token: str) -> bytes:
                return _ndjson(_ollama_chunk(model, token, False, rec.body, script))

            def finish() -> bytes:
                return _ndjson(_ollama_chunk(model, "", True, rec.body, script))

            await self._play(script, rec, resp, encode, finish)
            await resp.write_eof()
            return resp
        finally:
            rec.mark_closed()

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's ``/v1/audio/transcriptions``: multipart form in, the chosen format out."""
        fields: dict[str, list[str]] = {}
        file = b""
        filename = content_type = None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "file":
                    file = await part.read()
                    filename, content_type = part.filename, part.headers.get("Content-Type")
                elif part.name:
                    fields.setdefault(part.name, []).append(await part.text())
        except (ValueError, AssertionError, KeyError) as exc:
            return _openai_error(400, f"could not parse multipart form: {exc}")
        rec = RecordedTranscription(fields, file, filename, content_type, time.perf_counter())
        self.transcriptions.append(rec)
        script = (self.transcript_scripts.popleft() if self.transcript_scripts
                  else self.default_transcript)
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        if not file:
            return _openai_error(400, "you must provide a file")
        if not rec.field("model"):
            return _openai_error(400, "you must provide a model parameter")
        if script.status != 200:
            return _openai_error(script.status, script.error_message)
        if script.raw_body is not None:
            return web.Response(body=script.raw_body, content_type="application/json")
        fmt = rec.field("response_format") or "json"
        if fmt == "text":
            return web.Response(text=script.text + "\n")
        if fmt == "json":
            return web.json_response({"text": script.text})
        if fmt != "verbose_json":
            return _openai_error(400, f"response_format {fmt!r} is not supported here")
        duration = _wav_seconds(file)
        words = script.words
        if words is None:
            split = script.text.split()
            step = (duration or len(split) * 0.3) / max(len(split), 1)
            words = [(w, round(i * step, 3), round((i + 1) * step, 3))
                     for i, w in enumerate(split)]
        body: dict[str, Any] = {
            "task": "transcribe", "language": script.language, "duration": duration,
            "text": script.text,
            "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": duration or 0.0,
                          "text": script.text, "tokens": [], "temperature": 0.0,
                          "avg_logprob": -0.2, "compression_ratio": 1.0,
                          "no_speech_prob": 0.01}]}
        if "word" in fields.get("timestamp_granularities[]", []):
            body["words"] = [{"word": w, "start": a, "end": b} for w, a, b in words]
        return web.json_response(body)

    # --- the control API (``control=True``) ---------------------------------------------

    async def _control_push(self, request: web.Request) -> web.Response:
        """``{"scripts": [{Script fields}, ...]}``: queue them."""
        body = await request.json()
        try:
            scripts = [script_from_dict(d) for d in body.get("scripts", [])]
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.push(*scripts)
        return web.json_response({"queued": len(self.scripts)})

    async def _control_default(self, request: web.Request) -> web.Response:
        """``{Script fields}``: what every request without a queued script does."""
        try:
            self.default = script_from_dict(await request.json())
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _control_requests(self, request: web.Request) -> web.Response:
        """The records (``?body=0`` leaves the request bodies out)."""
        with_body = request.query.get("body", "1") != "0"
        return web.json_response({"requests": [
            {**({"body": r.body} if with_body else {}), "path": r.path,
             "started_at": r.started_at, "closed_at": r.closed_at, "completed": r.completed,
             "sent_at": r.sent_at, "last_user": _last_user(r.body)}
            for r in self.requests]})

    async def _control_clear(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.json_response({"ok": True})

    async def _openai_models(self, request: web.Request) -> web.Response:
        if self.listing_status != 200:
            return web.json_response({"error": "sick"}, status=self.listing_status)
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]})

    async def _ollama_tags(self, request: web.Request) -> web.Response:
        if self.listing_status != 200:
            return web.json_response({"error": "sick"}, status=self.listing_status)
        return web.json_response({"models": [
            {"name": f"{m}:latest", "model": f"{m}:latest", "size": 1000 + i,
             "modified_at": "2025-01-01T00:00:00Z"} for i, m in enumerate(self.models)]})

    async def _openai_embeddings(self, request: web.Request) -> web.Response:
        """OpenAI's ``/v1/embeddings``: a deterministic bag-of-words vector per input, so
        texts sharing words are close (cosine) and tests can predict what is recalled."""
        rec, _script = await self._record(request)
        rec.mark_closed()
        rec.completed = True
        inputs = rec.body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return web.json_response({"error": {"message": "input must be a string or a list "
                                                           "of strings", "type": "invalid"}},
                                     status=400)
        self.embedded.extend(inputs)
        data = [{"object": "embedding", "index": i, "embedding": embed(text, self.dimensions)}
                for i, text in enumerate(inputs)]
        tokens = sum(len(t.split()) for t in inputs)
        return web.json_response({"object": "list", "data": data,
                                  "model": rec.body.get("model", "test-embedding"),
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def script_from_dict(data: dict[str, Any]) -> Script:
    """A ``Script`` from JSON (unknown fields are an error)."""
    known = {f.name for f in fields(Script)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown Script fields: {sorted(unknown)}")
    return Script(**data)


def script_to_dict(script: Script) -> dict[str, Any]:
    return asdict(script)


def _last_user(body: dict[str, Any]) -> str | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return str(m.get("content"))
    return None


# --- wire encoding ----------------------------------------------------------------------------


def _openai_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "param": None, "code": None}}, status=status)


def _wav_seconds(data: bytes) -> float | None:
    """The length of a WAV upload (None for anything else)."""
    from companion_engine.speech.wav import WavError, wav_info

    try:
        info = wav_info(data)
    except WavError:
        return None
    return round(info.frames / info.sample_rate, 3) if info.sample_rate else None
def _memo(encode: Any) -> Any:
    """Encode each distinct token once per response (keeps the server cheap under load)."""
    cache: dict[str, bytes] = {}

    def encoded(token: str) -> bytes:
        out = cache.get(token)
        if out is None:
            out = cache[token] = encode(token)
        return out

    return encoded


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _openai_chunk(model: str, delta: dict[str, Any] | None, finish: str | None) -> dict[str, Any]:
    choices = [] if delta is None else [
        {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": choices}


def _prompt_tokens(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))


def _usage(body: dict[str, Any], tokens: list[str]) -> dict[str, int]:
    p = _prompt_tokens(body)
    return {"prompt_tokens": p, "completion_tokens": len(tokens), "total_tokens": p + len(tokens)}


def _openai_completion(model: str, text: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": _usage(body, [text])}


def _ollama_chunk(model: str, text: str, done: bool, body: dict[str, Any],
                  script: Script) -> dict[str, Any]:
    chunk: dict[str, Any] = {"model": model, "created_at": "2025-01-01T00:00:00Z",
                             "message": {"role": "assistant", "content": text}, "done": done}
    if done:
        chunk["done_reason"] = script.finish_reason
        if script.usage:
            chunk["prompt_eval_count"] = _prompt_tokens(body)
            chunk["eval_count"] = len(script.tokens)
    return chunk


def embed(text: str, dimensions: int = 64) -> list[float]:
    """A unit vector of the text's words hashed into ``dimensions`` buckets (stable)."""
    import hashlib
    import math
    import re

    vector = [0.0] * dimensions
    for word in re.findall(r"[^\W_]+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
        vector[int.from_bytes(digest, "little") % dimensions] += 1.0
    if not any(vector):
        vector[0] = 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


# --- out of process ---------------------------------------------------------------------------


async def _serve(host: str, port: int) -> None:
    server = await LLMTestServer.start(port, host=host, control=True)
    print(f"listening on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m companion_engine.testing.llmserver",
        description="The scripted LLM server in its own process, with the /_scripted/ API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main(sys.argv[1:])
