"""Patterns for the names clients send: character, conversation, model and voice.

One place, so a request model, a route's path check, the LLM gateway and
/openapi.json all agree on what a valid name is. Each uses ``\\Z`` so ``match``
cannot accept a trailing newline.
"""

from __future__ import annotations

import re
from typing import Literal

CHARACTER_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
CONVERSATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
#: provider/model: no empty, "." or ".." segment (some providers put the model in a URL
#: path), and ``\Z`` so ``match`` cannot accept a trailing newline.
MODEL_NAME = re.compile(r"^(?!.*//)(?!(?:.*/)?\.\.?(?:/|\Z))[A-Za-z0-9][A-Za-z0-9/_.:@+-]{0,199}\Z")
#: Voice names across backends: ``en-us+f3``, ``af_bella(2)+af_sky``, ``en_US-lessac-medium``.
VOICE_NAME = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.+()\- ]{0,99}\Z")
AudioFormat = Literal["wav", "pcm16", "opus", "mp3"]


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
