"""Token counting for prompt budgets: a real tokenizer where the model has one, else an estimate.

OpenAI-family models are counted with tiktoken, reading the BPE files LiteLLM
ships in its wheel (``litellm/litellm_core_utils/tokenizers``) so nothing is ever
downloaded: an encoding whose file is not there falls back to the estimate.
LiteLLM itself is never imported here (it takes seconds); only its folder is
located. Every other model gets ``estimate``: one token per 4 ASCII characters
plus one per non-ASCII character, which over-counts rather than under-counts
(budgets stay safe).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from loguru import logger

#: Where tiktoken looks up an encoding's BPE file (the sha1 of this URL names the file).
_ENCODING_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "p50k_base": "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken",
    "r50k_base": "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
}
#: Provider prefixes under which an OpenAI model keeps its tokenizer.
_OPENAI_PREFIXES = ("openai/", "azure/", "azure_ai/", "openrouter/openai/")
#: Per-message overhead of the chat format (OpenAI documents 3-4 tokens per message).
MESSAGE_OVERHEAD = 4
_CACHE_SIZE = 2048


@dataclass(slots=True)
class TokenCounter:
    """Counts tokens of text for one model; ``exact`` says whether a real tokenizer is used."""

    name: str
    exact: bool
    _encoding: Any = None
    _cache: OrderedDict[str, int] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, text: str) -> int:
        """Tokens in ``text`` (long texts are memoised: lore entries repeat every turn)."""
        if not text:
            return 0
        if self._encoding is None:
            return estimate_tokens(text)
        if len(text) < 256:
            return len(self._encoding.encode_ordinary(text))
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        n = len(self._encoding.encode_ordinary(text))
        with self._lock:
            self._cache[text] = n
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return n

    def count_message(self, content: str) -> int:
        """Tokens one chat message costs: its content plus the format's overhead."""
        return self.count(content) + MESSAGE_OVERHEAD

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": self.name, "exact": self.exact}


def estimate_tokens(text: str) -> int:
    """ceil(ASCII chars / 4) + non-ASCII chars: cheap, and on the high side for CJK and emoji."""
    if text.isascii():
        return math.ceil(len(text) / 4)
    wide = sum(1 for c in text if ord(c) > 127)
    return math.ceil((len(text) - wide) / 4) + wide


ESTIMATE = TokenCounter(name="estimate:chars/4", exact=False)


def _bundled_tiktoken_dir() -> Path | None:
    """LiteLLM's folder of tiktoken files, found without importing LiteLLM."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils/tokenizers"
    return folder if folder.is_dir() else None


def _offline_encoding(name: str) -> Any:
    """The tiktoken encoding ``name`` if its file is on disk, else None (never downloads)."""
    url = _ENCODING_URLS.get(name)
    if url is None:
        return None
    key = hashlib.sha1(url.encode()).hexdigest()
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured is None:
        bundled = _bundled_tiktoken_dir()
        if bundled is None or not (bundled / key).is_file():
            return None
        # What importing LiteLLM does anyway; tiktoken then reads the bundled file.
        os.environ["TIKTOKEN_CACHE_DIR"] = configured = str(bundled)
    if not (Path(configured) / key).is_file():
        return None
    try:
        import tiktoken

        return tiktoken.get_encoding(name)
    except Exception as exc:  # a corrupt file must not break prompts
        logger.warning("tiktoken encoding {} unusable, estimating tokens: {}", name, exc)
        return None


def _encoding_name(model: str) -> str | None:
    bare = model
    for prefix in _OPENAI_PREFIXES:
        if bare.startswith(prefix):
            bare = bare[len(prefix):]
            break
    if "/" in bare:  # another provider: its model has no tiktoken encoding
        return None
    try:
        from tiktoken.model import encoding_name_for_model
    except ImportError:
        return None
    try:
        return encoding_name_for_model(bare)
    except KeyError:
        return None


_counters: dict[str, TokenCounter] = {}
_counters_lock = threading.Lock()


def counter_for(model: str) -> TokenCounter:
    """The token counter for a LiteLLM model name (``openai/gpt-4o``, ``ollama_chat/llama3.2``).

    The first call for a model may read a tokenizer file: from async code use
    ``get_counter``.
    """
    with _counters_lock:
        found = _counters.get(model)
    if found is not None:
        return found
    name = _encoding_name(model or "")
    encoding = _load_encoding(name) if name else None
    counter = (TokenCounter(name=f"tiktoken:{name}", exact=True, _encoding=encoding)
               if encoding is not None else ESTIMATE)
    with _counters_lock:
        if len(_counters) > 256:
            _counters.clear()
        return _counters.setdefault(model, counter)


async def get_counter(model: str) -> TokenCounter:
    """``counter_for`` without blocking the event loop on a first tokenizer load."""
    with _counters_lock:
        found = _counters.get(model)
    if found is not None:
        return found
    return await asyncio.to_thread(counter_for, model)


@lru_cache(maxsize=8)
def _load_encoding(name: str) -> Any:
    return _offline_encoding(name)
