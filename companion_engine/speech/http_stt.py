"""Speech to text over HTTP: any OpenAI-compatible ``POST {base_url}/audio/transcriptions``.

whisper.cpp's server, speaches (faster-whisper-server), LocalAI, Groq and OpenAI all take
the same multipart form: ``file`` (here a 16 kHz mono WAV), ``model``, optional
``language``, ``prompt``, ``temperature``, ``response_format`` and, with
``verbose_json``, ``timestamp_granularities[]=word``. They answer ``{"text"}``
(``json``) or ``{"text", "language", "duration", "words": [{word, start, end}],
"segments"}`` (``verbose_json``); the language comes as a name (``english``) from
OpenAI and as a code from some servers, and leaves here as an ISO 639-1 code.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import aiohttp
from pydantic import Field

from companion_engine.stages import AudioInput, StageOptions, STTBackend, Transcript, Word

if TYPE_CHECKING:
    from companion_engine.turn import Turn

# Whisper's languages, as its tokenizer names them: code name, ...
_WHISPER_LANGUAGES = (
    "en english zh chinese de german es spanish ru russian ko korean fr french ja japanese "
    "pt portuguese tr turkish pl polish ca catalan nl dutch ar arabic sv swedish it italian "
    "id indonesian hi hindi fi finnish vi vietnamese he hebrew uk ukrainian el greek ms malay "
    "cs czech ro romanian da danish hu hungarian ta tamil no norwegian th thai ur urdu "
    "hr croatian bg bulgarian lt lithuanian la latin mi maori ml malayalam cy welsh sk slovak "
    "te telugu fa persian lv latvian bn bengali sr serbian az azerbaijani sl slovenian "
    "kn kannada et estonian mk macedonian br breton eu basque is icelandic hy armenian "
    "ne nepali mn mongolian bs bosnian kk kazakh sq albanian sw swahili gl galician mr marathi "
    "pa punjabi si sinhala km khmer sn shona yo yoruba so somali af afrikaans oc occitan "
    "ka georgian be belarusian tg tajik sd sindhi gu gujarati am amharic yi yiddish lo lao "
    "uz uzbek fo faroese ht haitian ps pashto tk turkmen nn nynorsk mt maltese sa sanskrit "
    "lb luxembourgish my myanmar bo tibetan tl tagalog mg malagasy as assamese tt tatar "
    "haw hawaiian ln lingala ha hausa ba bashkir jw javanese su sundanese yue cantonese"
).split()
LANGUAGE_CODES: dict[str, str] = dict(zip(_WHISPER_LANGUAGES[1::2], _WHISPER_LANGUAGES[::2],
                                          strict=True))
LANGUAGE_CODES.update({"burmese": "my", "castilian": "es", "flemish": "nl", "haitian creole": "ht",
                       "letzeburgesch": "lb", "moldavian": "ro", "moldovan": "ro",
                       "panjabi": "pa", "pushto": "ps", "sinhalese": "si", "valencian": "ca"})


def language_code(value: Any) -> str | None:
    """``english`` / ``English`` / ``en`` -> ``en``; None for nothing usable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().lower()
    if text in LANGUAGE_CODES:
        return LANGUAGE_CODES[text]
    return text if 2 <= len(text) <= 8 and text.replace("-", "").isalpha() else None


class STTError(RuntimeError):
    """A speech-to-text server could not be reached, refused or sent nonsense."""


def parse_transcription(body: bytes, content_type: str, where: str) -> Transcript:
    """A transcription response (``json``, ``verbose_json`` or plain ``text``)."""
    if content_type.startswith("text/plain"):
        return Transcript(text=body.decode("utf-8", "replace").strip())
    try:
        data = json.loads(body)
    except ValueError:
        raise STTError(f"{where} sent invalid JSON: {body[:120]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise STTError(f"{where} sent no `text` in its answer: {body[:120]!r}")
    words = []
    for raw in data.get("words") or []:
        try:
            words.append(Word(word=str(raw["word"]).strip(), start=float(raw["start"]),
                              end=float(raw["end"]),
                              probability=(float(raw["probability"])
                                           if raw.get("probability") is not None else None)))
        except (KeyError, TypeError, ValueError):
            raise STTError(f"{where} sent a malformed word: {raw!r}"[:300]) from None
    duration = data.get("duration")
    return Transcript(
        text=data["text"].strip(), language=language_code(data.get("language")), words=words,
        duration=float(duration) if isinstance(duration, int | float) else None)


class OpenAISTT(STTBackend):
    """Any OpenAI-compatible ``/v1/audio/transcriptions`` server."""

    name: ClassVar[str] = "openai"
    description: ClassVar[str] = ("OpenAI-compatible /v1/audio/transcriptions (whisper.cpp "
                                  "server, speaches, Groq, OpenAI)")

    class Options(StageOptions):
        base_url: str = Field(default="http://127.0.0.1:8000/v1", min_length=1)
        api_key: str | None = None
        model: str = Field(default="whisper-1", min_length=1)
        #: ISO 639-1 code; default: the profile's ``speech.language``, else detected.
        language: str | None = None
        #: Text that primes the recogniser (names, spelling, style).
        prompt: str | None = Field(default=None, max_length=2000)
        #: ``verbose_json`` gives the language and, with ``word_timestamps``, word times.
        response_format: Literal["verbose_json", "json"] = "verbose_json"
        word_timestamps: bool = True
        temperature: float | None = Field(default=None, ge=0, le=1)
        timeout_s: float = Field(default=30, gt=0, le=600)
        #: Extra form fields for servers that take more.
        extra: dict[str, str] = Field(default_factory=dict)

    options: Options

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options)
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.options.base_url.rstrip("/") + "/audio/transcriptions"

    def form(self, audio: AudioInput, turn: Turn | None) -> aiohttp.FormData:
        o = self.options
        form = aiohttp.FormData()
        form.add_field("file", audio.wav(), filename="speech.wav", content_type="audio/wav")
        form.add_field("model", o.model)
        language = o.language or audio.language or (turn.profile.speech.language
                                                    if turn is not None else None)
        if language:
            form.add_field("language", language.split("-")[0])
        if o.prompt:
            form.add_field("prompt", o.prompt)
        if o.temperature is not None:
            form.add_field("temperature", str(o.temperature))
        form.add_field("response_format", o.response_format)
        if o.response_format == "verbose_json" and o.word_timestamps:
            form.add_field("timestamp_granularities[]", "word")
            form.add_field("timestamp_granularities[]", "segment")
        for key, value in o.extra.items():
            form.add_field(key, value)
        return form

    async def transcribe(self, audio: AudioInput, turn: Turn) -> Transcript:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.options.timeout_s))
        headers = {"Authorization": f"Bearer {self.options.api_key}"} if self.options.api_key \
            else {}
        url = self.url
        where = f"STT server {url}"
        try:
            async with self._session.post(url, data=self.form(audio, turn),
                                          headers=headers) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise STTError(f"{where} answered HTTP {resp.status}: {_error_text(body)}")
                return parse_transcription(body, resp.content_type, where)
        except TimeoutError:
            raise STTError(f"{where} timed out after {self.options.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise STTError(f"{where} unreachable: {exc}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _error_text(body: bytes) -> str:
    """The message of an OpenAI-style error body, else the start of the body."""
    try:
        data = json.loads(body)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) \
            else data.get("error") or data.get("detail")
        if message:
            return str(message)[:300]
    except (ValueError, AttributeError, TypeError, KeyError):
        pass
    return body[:300].decode("utf-8", "replace").strip() or "(empty body)"
