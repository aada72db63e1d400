"""Patterns for the names clients send: character, conversation, model and voice.

One place, so a request model, a route's path check, the LLM gateway and
/openapi.json all agree on what a valid name is. Each uses ``\\Z`` so ``match``
cannot accept a trailing newline; ``ecma()`` spells a pattern for JSON Schema.

Request models use the annotated types (``CharacterId``, ``ModelName``, ...): they
validate with these patterns and appear in /openapi.json as a named schema
(``#/components/schemas/CharacterId``, see ``NAMED``). ``SCHEMAS`` defines the fixed ones; the
document fills in those whose valid values depend on the running server (LiteLLM's
providers, the audio formats this install can encode, the TTS backend's voices).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, WithJsonSchema

#: ``upload`` is not an id: ``/api/characters/upload`` is the upload route.
CHARACTER_ID = re.compile(r"^(?!upload\Z)[a-z0-9][a-z0-9_-]{0,63}\Z")
CONVERSATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
#: provider/model: no empty, "." or ".." segment (some providers put the model in a URL
#: path), and ``\Z`` so ``match`` cannot accept a trailing newline.
MODEL_NAME = re.compile(r"^(?!.*//)(?!(?:.*/)?\.\.?(?:/|\Z))[A-Za-z0-9][A-Za-z0-9/_.:@+-]{0,199}\Z")
#: Voice names across backends: ``en-us+f3``, ``af_bella(2)+af_sky``, ``en_US-lessac-medium``.
VOICE_NAME = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.+()\- ]{0,99}\Z")
AudioFormat = Literal["wav", "pcm16", "opus", "mp3"]
AUDIO_FORMATS: tuple[AudioFormat, ...] = ("wav", "pcm16", "opus", "mp3")


def check_voice_name(v: str | None) -> str | None:
    """A voice name, not a path (``..``, ``/``) nor anything a backend could misread."""
    if v is not None and not VOICE_NAME.match(v):
        raise ValueError("voice must be a voice name (letters, digits, _ . + ( ) - and "
                         "spaces), not a path")
    return v


def check_model_name(v: str | None) -> str | None:
    """A ``provider/model`` string in the shape ``MODEL_NAME`` allows."""
    if v is not None and not MODEL_NAME.fullmatch(v):
        raise ValueError("not a valid model name (provider/model, e.g. ollama_chat/llama3.2)")
    return v


def _matching(regex: re.Pattern[str], message: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if not regex.fullmatch(v):
            raise ValueError(message)
        return v

    return check


# --- the same rules as JSON Schema (for /openapi.json) -----------------------------------------


def ecma(regex: re.Pattern[str]) -> str:
    """``regex`` as a JSON Schema ``pattern`` (ECMA-262): ``\\Z`` becomes ``$``, which in
    ECMA-262 (without the ``m`` flag) matches only at the very end, as ``\\Z`` does here."""
    return regex.pattern.replace(r"\Z", "$")


#: A character ``str.strip()`` keeps: a string with one is not blank. Spelled out rather
#: than ``\S`` because Python and ECMA-262 disagree on a few whitespace characters.
NOT_BLANK = (r"[^\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
             r"\u3000]")


def ref(name: str) -> dict[str, Any]:
    """A reference to a named schema of /openapi.json."""
    return {"$ref": f"#/components/schemas/{name}"}


#: The key that marks a schema pydantic writes as "the named schema ...": /openapi.json
#: turns ``{"x-named": name}`` into ``ref(name)`` (pydantic cannot write a foreign ``$ref``).
NAMED = "x-named"


def _named(name: str) -> WithJsonSchema:
    return WithJsonSchema({NAMED: name})


def _string(regex: re.Pattern[str], max_length: int, description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": ecma(regex), "minLength": 1, "maxLength": max_length,
            "description": description}


#: The named schemas whose values do not depend on the running server.
SCHEMAS: dict[str, dict[str, Any]] = {
    "CharacterId": _string(CHARACTER_ID, 64, "A character id: lower-case letters, digits, "
                                             "`_` and `-`, starting with a letter or digit "
                                             "(not `upload`)."),
    "ConversationId": _string(CONVERSATION_ID, 128, "A conversation id: letters, digits, "
                                                    "`_`, `-`, `.` and `:`."),
    "VoiceName": _string(VOICE_NAME, 100, "A voice of the TTS backend (`GET /api/tts/voices`):"
                                          " letters, digits, `_ . + ( ) -` and spaces."),
}

CharacterId = Annotated[str, AfterValidator(_matching(
    CHARACTER_ID, "must match ^[a-z0-9][a-z0-9_-]{0,63}$ (and not be upload)")),
    _named("CharacterId")]
ConversationId = Annotated[str, AfterValidator(_matching(
    CONVERSATION_ID, "must be 1-128 letters, digits, '_', '-', '.', ':'")),
    _named("ConversationId")]
VoiceName = Annotated[str, AfterValidator(check_voice_name), _named("VoiceName")]
#: A voice the TTS backend must have (``/api/tts``): its voices when it lists them.
BackendVoice = Annotated[str, AfterValidator(check_voice_name), _named("BackendVoice")]
#: ``provider/model``; LiteLLM knows the provider (checked where the model is used).
ModelName = Annotated[str, AfterValidator(check_model_name), _named("ModelName")]
#: An audio format this install can encode (opus and mp3 need PyAV).
RequestAudioFormat = Annotated[AudioFormat, _named("AudioFormat")]


def model_name_schema(providers: Iterable[str]) -> dict[str, Any]:
    """``provider/model`` with one of ``providers`` (LiteLLM's, and our aliases), in the
    shape ``MODEL_NAME`` allows."""
    plain = {p for p in providers if re.fullmatch(r"[A-Za-z0-9_-]+", p)}  # nothing to escape
    names = "|".join(sorted(plain, key=lambda p: (-len(p), p)))
    pattern = (r"^(?!.*//)(?!(?:.*/)?\.\.?(?:/|$))(?:" + names +
               r")/[A-Za-z0-9_.:@+-][A-Za-z0-9/_.:@+-]*$")
    return {"type": "string", "pattern": pattern, "maxLength": 200,
            "description": "A LiteLLM model, `provider/model` (`ollama_chat/llama3.2`, "
                           "`openai/gpt-4o-mini`). A bare name LiteLLM knows (`gpt-4o`) is "
                           "read as its `provider/model` too (legacy)."}


def audio_format_schema(available: Iterable[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(available),
            "description": "Audio format: `wav`, `pcm16` (raw 16-bit little-endian), and "
                           "with PyAV installed `opus` (Ogg) and `mp3`."}


def backend_voice_schema(voices: Iterable[str]) -> dict[str, Any]:
    """The backend's voices when it lists them, else any voice name."""
    names = sorted(set(voices))
    if not names:
        return {**SCHEMAS["VoiceName"], "description": "A voice of the TTS backend (this "
                "backend lists none)."}
    return {"type": "string", "enum": names, "description": "A voice of the TTS backend "
            "(`GET /api/tts/voices`)."}
