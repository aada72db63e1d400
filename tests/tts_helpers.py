"""Local TTS servers for the tests, speaking the real wire formats of the servers we support.

One aiohttp app serves the three APIs on a loopback port, in its own thread and
event loop so a module can start it once:

- OpenAI-compatible ``POST /v1/audio/speech`` and Kokoro-style ``GET /v1/audio/voices``;
- xtts-api-server ``POST /tts_to_audio/`` and ``GET /speakers``;
- Piper ``POST /synthesize`` and ``GET /voices``.

The audio is real: each request is spoken by espeak-ng. A text containing
``FAIL`` gets an HTTP 500; ``delay_s`` slows every synthesis down so tests can
watch concurrency and cancellation. Every request body is recorded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from companion_engine.speech.espeak import engine
from companion_engine.speech.wav import pcm_to_wav

OPENAI_FORMATS = {"mp3", "opus", "aac", "flac", "wav", "pcm"}


@dataclass
class TTSServer:
    url: str = ""
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    finished: int = 0
    voices_status: int = 200
    headers: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.requests.clear()
        self.headers.clear()
        self.delay_s = 0.0
        self.in_flight = self.max_in_flight = self.finished = 0
        self.voices_status = 200

    async def speak(self, text: str) -> tuple[bytes, int]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            result = await engine().synthesize(text)
            return result.pcm, result.sample_rate
        finally:
            self.in_flight -= 1
            self.finished += 1

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self.openai_speech)
        app.router.add_get("/v1/audio/voices", self.openai_voices)
        app.router.add_post("/tts_to_audio/", self.xtts_speech)
        app.router.add_get("/speakers", self.xtts_speakers)
        app.router.add_post("/synthesize", self.piper_speech)
        app.router.add_get("/voices", self.piper_voices)
        return app

    async def _body(self, request: web.Request, kind: str) -> dict[str, Any]:
        body = await request.json()
        self.requests.append((kind, body))
        self.headers.append(dict(request.headers))
        return body

    async def openai_speech(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, "openai")
        missing = {"model", "input", "voice"} - body.keys()
        if missing or body.get("response_format", "mp3") not in OPENAI_FORMATS \
                or not 0.25 <= float(body.get("speed", 1.0)) <= 4.0:
            return web.json_response({"error": {"message": f"bad request {sorted(missing)}",
                                                "type": "invalid_request_error"}}, status=400)
        if "FAIL" in body["input"]:
            return web.json_response({"error": {"message": "synthesis exploded",
                                                "type": "server_error"}}, status=500)
        pcm, rate = await self.speak(body["input"])
        if body.get("response_format") == "pcm":
            return web.Response(body=pcm, content_type="audio/pcm")
        if body.get("response_format") == "wav":
            # Kokoro streams WAV with chunked encoding; do the same.
            resp = web.StreamResponse(headers={"Content-Type": "audio/wav"})
            await resp.prepare(request)
            wav = pcm_to_wav(pcm, rate)
            for i in range(0, len(wav), 4096):
                await resp.write(wav[i : i + 4096])
            await resp.write_eof()
            return resp
        return web.Response(body=b"ID3fake-mp3-frames" + pcm[:100], content_type="audio/mpeg")

    async def openai_voices(self, request: web.Request) -> web.Response:
        if self.voices_status != 200:
            return web.json_response({"detail": "Not Found"}, status=self.voices_status)
        return web.json_response({"voices": ["af_bella", "af_sky", "am_adam"]})

    async def xtts_speech(self, request: web.Request) -> web.Response:
        body = await self._body(request, "xtts")
        if not {"text", "speaker_wav", "language"} <= body.keys():
            return web.json_response({"detail": "Field required"}, status=422)
        if "FAIL" in body["text"]:
            return web.json_response({"detail": "Error: CUDA out of memory"}, status=500)
        pcm, rate = await self.speak(body["text"])
        return web.Response(body=pcm_to_wav(pcm, rate), content_type="audio/wav")

    async def xtts_speakers(self, request: web.Request) -> web.Response:
        return web.json_response([
            {"name": name, "voice_id": name, "preview_url": f"{self.url}/sample/{name}.wav"}
            for name in ("female", "calm")
        ])

    async def piper_speech(self, request: web.Request) -> web.Response:
        body = await self._body(request, "piper")
        text = str(body.get("text", "")).strip()
        if not text:
            return web.Response(status=500, text="ValueError: No text provided")
        if "FAIL" in text:
            return web.Response(status=500, text="Internal Server Error")
        if text == "NOT WAV":
            return web.Response(status=200, text="<html>oops</html>", content_type="text/html")
        pcm, rate = await self.speak(text)
        return web.Response(body=pcm_to_wav(pcm, rate), content_type="audio/wav")

    async def piper_voices(self, request: web.Request) -> web.Response:
        return web.json_response({
            "en_US-lessac-medium": {"language": {"code": "en_US"}, "num_speakers": 1,
                                    "speaker_id_map": {}},
            "en_US-libritts-high": {"language": {"code": "en_US"}, "num_speakers": 2,
                                    "speaker_id_map": {"p1": 0, "p2": 1}},
        })


@contextmanager
def running_tts_server() -> Iterator[TTSServer]:
    """Serve ``TTSServer`` on 127.0.0.1 in a background thread until the block ends."""
    server = TTSServer()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(server.app())

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        server.url = f"http://127.0.0.1:{port}"
        ready.set()

    thread = threading.Thread(target=loop.run_forever, name="tts-test-server", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    ready.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
