"""TTS backends that call a speech server over HTTP, each in its real wire format.

- ``openai``: any OpenAI-compatible ``POST {base_url}/audio/speech`` (Kokoro-FastAPI,
  openedai-speech, AllTalk, OpenAI) with ``{model, input, voice, response_format, speed}``.
- ``xtts``: xtts-api-server, ``POST /tts_to_audio/`` with ``{text, speaker_wav, language}``.
- ``piper``: the Piper HTTP server, ``POST /synthesize`` with ``{text, voice, speaker, ...}``.

Each stage owns one ``aiohttp.ClientSession`` (opened on first use, closed with
the pipeline). Any failure becomes a ``TTSError`` whose message names the
server and the reason, which the session turns into that sentence's
``audio_error``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import aiohttp
from pydantic import Field

from companion_engine.speech.wav import WavError, pcm_to_wav, wav_info
from companion_engine.stages import Audio, StageOptions, TTSBackend

if TYPE_CHECKING:
    from companion_engine.turn import Turn

#: The voices OpenAI's own API offers (it has no endpoint listing them).
OPENAI_VOICES = ("alloy", "ash", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer")


class TTSError(RuntimeError):
    """A TTS server could not be reached or refused the request."""


class HttpOptions(StageOptions):
    base_url: str = Field(min_length=1)
    timeout_s: float = Field(default=30, gt=0, le=600)


class HttpTTS(TTSBackend):
    """Shared plumbing: one client session, errors with the server named."""

    options: Any

    def __init__(self, options: StageOptions | None = None) -> None:
        super().__init__(options)
        self._session: aiohttp.ClientSession | None = None

    def url(self, path: str) -> str:
        return self.options.base_url.rstrip("/") + path

    def headers(self) -> dict[str, str]:
        return {}

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[bytes, str]:
        """Body and content type of a 2xx response, else ``TTSError``."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.options.timeout_s))
        url = self.url(path)
        try:
            async with self._session.request(method, url, headers=self.headers(),
                                             **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    detail = body[:300].decode("utf-8", "replace").strip()
                    raise TTSError(f"{self.name} TTS server {url} answered HTTP {resp.status}"
                                   + (f": {detail}" if detail else ""))
                return body, resp.content_type
        except TimeoutError:
            raise TTSError(f"{self.name} TTS server {url} timed out after "
                           f"{self.options.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise TTSError(f"{self.name} TTS server {url} unreachable: {exc}") from None

    async def get_json(self, path: str) -> Any:
        body, _ = await self.request("GET", path)
        try:
            return json.loads(body)
        except ValueError:
            raise TTSError(f"{self.name} TTS server {self.url(path)} sent invalid JSON") from None

    def wav_audio(self, body: bytes, path: str) -> Audio:
        try:
            info = wav_info(body)
        except WavError as exc:
            raise TTSError(f"{self.name} TTS server {self.url(path)} did not send WAV audio: "
                           f"{exc}") from None
        return Audio(data=body, format="wav", sample_rate=info.sample_rate,
                     duration_ms=info.duration_ms)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OpenAITTS(HttpTTS):
    """Any OpenAI-compatible ``/v1/audio/speech`` server."""

    name: ClassVar[str] = "openai"
    description: ClassVar[str] = ("OpenAI-compatible /v1/audio/speech (Kokoro-FastAPI, "
                                  "openedai-speech, AllTalk, OpenAI)")

    class Options(HttpOptions):
        base_url: str = Field(default="http://127.0.0.1:8880/v1", min_length=1)
        api_key: str | None = None
        model: str = "tts-1"
        voice: str = "alloy"
        speed: float = Field(default=1.0, ge=0.25, le=4.0)
        format: Literal["wav", "pcm", "mp3", "opus", "aac", "flac"] = "wav"
        #: Sample rate of ``pcm`` replies (24000 for OpenAI and Kokoro).
        pcm_sample_rate: int = Field(default=24000, ge=8000, le=192000)
        #: Extra JSON fields for servers that take more (e.g. Kokoro's ``lang_code``).
        extra: dict[str, Any] = Field(default_factory=dict)

    options: Options

    def headers(self) -> dict[str, str]:
        key = self.options.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        o = self.options
        body = {**o.extra, "model": o.model, "input": text, "voice": turn.voice or o.voice,
                "response_format": o.format, "speed": o.speed}
        data, _ = await self.request("POST", "/audio/speech", json=body)
        if o.format == "wav":
            return self.wav_audio(data, "/audio/speech")
        if o.format == "pcm":
            frames = len(data) // 2
            return Audio(data=pcm_to_wav(data[: frames * 2], o.pcm_sample_rate), format="wav",
                         sample_rate=o.pcm_sample_rate,
                         duration_ms=round(frames * 1000 / o.pcm_sample_rate))
        return Audio(data=data, format=o.format, sample_rate=o.pcm_sample_rate)

    async def voices(self) -> list[dict[str, Any]]:
        try:
            listing = await self.get_json("/audio/voices")
        except TTSError as exc:
            if "HTTP 404" in str(exc):  # OpenAI itself lists no voices
                return [{"id": v, "name": v} for v in OPENAI_VOICES]
            raise
        items = listing.get("voices", listing.get("data", [])) if isinstance(listing, dict) \
            else listing
        return [_voice_entry(v) for v in items or []]


class XttsTTS(HttpTTS):
    """xtts-api-server (daswer123): voice cloning from speaker WAVs."""

    name: ClassVar[str] = "xtts"
    description: ClassVar[str] = "xtts-api-server (POST /tts_to_audio/)"

    class Options(HttpOptions):
        base_url: str = Field(default="http://127.0.0.1:8020", min_length=1)
        #: A speaker name from the server's speakers folder (or a path on the server).
        speaker: str = "female"
        language: str = "en"
        #: XTTS voices a final "." as an artefact; drop a single trailing period.
        strip_final_period: bool = True

    options: Options

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        o = self.options
        if o.strip_final_period and text.endswith(".") and not text.endswith(".."):
            text = text[:-1]
        body = {"text": text, "speaker_wav": turn.voice or o.speaker, "language": o.language}
        data, _ = await self.request("POST", "/tts_to_audio/", json=body)
        return self.wav_audio(data, "/tts_to_audio/")

    async def voices(self) -> list[dict[str, Any]]:
        listing = await self.get_json("/speakers")
        return [{"id": v.get("voice_id") or v.get("name"), "name": v.get("name"),
                 "preview_url": v.get("preview_url")} if isinstance(v, dict) else _voice_entry(v)
                for v in listing or []]


class PiperTTS(HttpTTS):
    """The Piper HTTP server (``python -m piper.http_server``)."""

    name: ClassVar[str] = "piper"
    description: ClassVar[str] = "Piper HTTP server (POST /synthesize)"

    class Options(HttpOptions):
        base_url: str = Field(default="http://127.0.0.1:5000", min_length=1)
        #: ``/synthesize`` for current piper1-gpl; ``/`` for 2025-era servers.
        path: str = "/synthesize"
        voice: str | None = None
        speaker: str | None = None
        speaker_id: int | None = Field(default=None, ge=0)
        length_scale: float | None = Field(default=None, gt=0, le=10)
        noise_scale: float | None = Field(default=None, ge=0, le=5)
        noise_w_scale: float | None = Field(default=None, ge=0, le=5)

    options: Options

    async def synthesize(self, text: str, turn: Turn) -> Audio:
        o = self.options
        voice = turn.voice or o.voice or ""
        body: dict[str, Any] = {"text": text}
        for key, value in (("voice", voice or None), ("speaker", o.speaker),
                           ("speaker_id", o.speaker_id), ("length_scale", o.length_scale),
                           ("noise_scale", o.noise_scale), ("noise_w_scale", o.noise_w_scale)):
            if value is not None:
                body[key] = value
        data, _ = await self.request("POST", o.path, json=body)
        return self.wav_audio(data, o.path)

    async def voices(self) -> list[dict[str, Any]]:
        listing = await self.get_json("/voices")
        if not isinstance(listing, dict):
            raise TTSError(f"piper TTS server {self.url('/voices')} sent an unexpected listing")
        out = []
        for voice_id, config in listing.items():
            config = config if isinstance(config, dict) else {}
            language = (config.get("language") or {}).get("code")
            out.append({"id": voice_id, "name": voice_id,
                        "languages": [language] if language else [],
                        "speakers": sorted((config.get("speaker_id_map") or {}).keys())})
        return out


def _voice_entry(v: Any) -> dict[str, Any]:
    if isinstance(v, dict):
        vid = v.get("id") or v.get("voice_id") or v.get("name")
        return {"id": vid, "name": v.get("name") or vid}
    return {"id": str(v), "name": str(v)}
