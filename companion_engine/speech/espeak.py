"""The embedded speech engine: espeak-ng from the ``espeakng-loader`` wheel, through ctypes.

espeak-ng keeps global state (voice, rate, the synth callback) and is not
thread-safe, so the process has one ``Espeak`` and every call into the library
runs on its single worker thread. Synthesis uses the synchronous output mode:
the callback receives 16-bit mono samples and the phoneme events (IPA, with
their time in ms) that become visemes. A cancelled caller sets a flag the
callback sees, which aborts the sentence inside the library.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from companion_engine.errors import UnknownVoiceError

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_PHONEME_IPA = 0x0002
_INIT_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3

#: espeak's limits for ``rate`` (words per minute) and ``pitch``.
RATE_RANGE = (80, 450)
PITCH_RANGE = (0, 99)
#: espeak-ng's own base pitch, what ``pitch=None`` means. Parameters outlive a voice
#: change in espeak, so a call without a pitch must set this one back.
DEFAULT_PITCH = 50


class EspeakError(RuntimeError):
    """espeak-ng could not load, initialise, find a voice or synthesise."""


class UnknownEspeakVoice(EspeakError, UnknownVoiceError):
    """No installed espeak-ng voice has this name."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int), ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p), ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p), ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass(slots=True)
class Synthesis:
    """One synthesised text: raw PCM plus the phonemes espeak reported."""

    pcm: bytes
    sample_rate: int
    #: ``(time_ms, ipa)``; an empty string is a pause.
    phonemes: list[tuple[int, str]] = field(default_factory=list)

    @property
    def duration_ms(self) -> int:
        return round(len(self.pcm) / 2 * 1000 / self.sample_rate) if self.sample_rate else 0


@dataclass(slots=True)
class _Job:
    cancel: threading.Event
    chunks: list[bytes] = field(default_factory=list)
    phonemes: list[tuple[int, str]] = field(default_factory=list)


class Espeak:
    """The process's one espeak-ng instance; all calls go through one thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self._lib: ctypes.CDLL | None = None
        self._callback: Any = None  # keeps the ctypes callback alive
        self._job: _Job | None = None
        self._settings: tuple[str, int, int | None, int] | None = None
        self.sample_rate = 0
        self._voices: list[dict[str, Any]] | None = None

    # --- public, async ----------------------------------------------------------------------

    async def synthesize(self, text: str, *, voice: str = "en-us", rate: int = 175,
                         pitch: int | None = None, volume: int = 100,
                         end_pause: bool = True) -> Synthesis:
        """Speak ``text`` on the worker thread; cancelling aborts it inside espeak."""
        job = _Job(cancel=threading.Event())
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, self._synthesize, job, text, voice, rate, pitch, volume,
                end_pause)
        except asyncio.CancelledError:
            job.cancel.set()
            raise

    async def voices(self) -> list[dict[str, Any]]:
        """Installed voices: ``{id, name, languages, gender}``."""
        if self._voices is None:
            loop = asyncio.get_running_loop()
            self._voices = await loop.run_in_executor(self._executor, self._list_voices)
        return self._voices

    async def warm_up(self, voice: str = "en-us") -> None:
        """Load the library and a voice ahead of the first turn."""
        await self.synthesize("a", voice=voice)

    # --- worker thread ----------------------------------------------------------------------

    def _ensure(self) -> ctypes.CDLL:
        if self._lib is not None:
            return self._lib
        try:
            import espeakng_loader

            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_parent = str(Path(espeakng_loader.get_data_path()).parent)
        except (ImportError, OSError, RuntimeError) as exc:
            raise EspeakError(f"espeak-ng library could not be loaded: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(),
            _INIT_PHONEME_EVENTS | _INIT_PHONEME_IPA | _INIT_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak-ng failed to initialise (data at {data_parent})")
        self._callback = _Callback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self.sample_rate = rate
        self._lib = lib
        logger.debug("espeak-ng ready: {} Hz, data {}", rate, data_parent)
        return lib

    def _on_audio(self, wav: Any, count: int, events: Any) -> int:
        job = self._job
        if job is None:
            return 1
        if count > 0 and wav:
            job.chunks.append(ctypes.string_at(wav, count * 2))
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                raw = bytes(ev.id.string).split(b"\0", 1)[0]
                job.phonemes.append((ev.audio_position, raw.decode("utf-8", "replace")))
            i += 1
        return 1 if job.cancel.is_set() else 0

    def _apply(self, lib: ctypes.CDLL, voice: str, rate: int, pitch: int | None,
               volume: int) -> None:
        settings = (voice, rate, pitch, volume)
        if settings == self._settings:
            return
        self._settings = None
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            # Listed ids are languages ("fr-fr"); espeak finds those by property, but
            # matches prefixes too ("no-such" -> Norwegian), so only listed ones count.
            if self._voices is None:
                self._voices = self._list_voices()
            known = {lang for v in self._voices for lang in v["languages"]}
            spec = _Voice()
            language = ctypes.c_char_p(voice.encode())
            spec.languages = ctypes.cast(language, ctypes.c_void_p)
            # A listed id that its language does not find (Cherokee, "chr-US-Qaaa-x-west")
            # is found by the voice file it came from ("iro/chr").
            files = [v["identifier"] for v in self._voices if v["id"] == voice]
            if voice not in known or (
                    lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) != 0
                    and not any(lib.espeak_SetVoiceByName(f.encode()) == 0 for f in files)):
                raise UnknownEspeakVoice(f"unknown espeak voice {voice!r}")
        lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
        lib.espeak_SetParameter(_PARAM_VOLUME, volume, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, DEFAULT_PITCH if pitch is None else pitch, 0)
        self._settings = settings

    def _synthesize(self, job: _Job, text: str, voice: str, rate: int, pitch: int | None,
                    volume: int, end_pause: bool) -> Synthesis:
        if job.cancel.is_set():
            raise EspeakError("cancelled")
        lib = self._ensure()
        self._apply(lib, voice, rate, pitch, volume)
        data = text.encode("utf-8") + b"\0"
        flags = _CHARS_UTF8 | (_ENDPAUSE if end_pause else 0)
        self._job = job
        try:
            err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
        finally:
            self._job = None
        if job.cancel.is_set():
            raise EspeakError("cancelled")
        if err != 0:
            raise EspeakError(f"espeak_Synth failed with code {err}")
        return Synthesis(b"".join(job.chunks), self.sample_rate, job.phonemes)

    def _list_voices(self) -> list[dict[str, Any]]:
        lib = self._ensure()
        array = lib.espeak_ListVoices(None)
        voices = []
        i = 0
        while array[i]:
            v = array[i].contents
            identifier = (v.identifier or b"").decode()
            languages = _languages(v.languages)
            voices.append({
                "id": languages[0] if languages else identifier,
                "name": (v.name or b"").decode(),
                "identifier": identifier,
                "languages": languages,
                "gender": {1: "male", 2: "female"}.get(v.gender),
            })
            i += 1
        return voices


def _languages(ptr: int | None) -> list[str]:
    """Decode espeak's ``languages`` field: (priority byte, NUL-terminated name)* then 0."""
    if not ptr:
        return []
    out = []
    pos = ptr
    while True:
        priority = ctypes.string_at(pos, 1)
        if priority == b"\0":
            return out
        name = ctypes.string_at(pos + 1)
        out.append(name.decode("utf-8", "replace"))
        pos += 1 + len(name) + 1


_ENGINE: Espeak | None = None
_ENGINE_LOCK = threading.Lock()


def engine() -> Espeak:
    """The process's espeak-ng (created on first use; the library loads on first call)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Espeak()
        return _ENGINE
