"""Shared pieces of the speech tests: pipelines built from real stages, an event recorder."""

from __future__ import annotations

import base64
from typing import Any

from companion_engine.config import Profile
from companion_engine.pipeline import Pipeline, build_pipeline
from companion_engine.plugins import PluginHost
from companion_engine.speech.wav import wav_info
from companion_engine.turn import Turn

_HOST: PluginHost | None = None


def plugin_host() -> PluginHost:
    """The built-in plugins only (no entry points, no local plugins)."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost.load(entry_points=False)
    return _HOST


def make_pipeline(speech: dict[str, Any] | None = None) -> Pipeline:
    """A pipeline from a profile whose ``speech:`` block is ``speech``."""
    profile = Profile.model_validate({"prompt": [], "output": [], "speech": speech or {}})
    return build_pipeline(profile, plugin_host())


def make_turn(pipeline: Pipeline) -> Turn:
    return Turn(profile=pipeline.profile, user_message="hi")


class Recorder:
    """The runner's ``emit``: keeps every event in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, name: str, data: dict[str, Any]) -> None:
        self.events.append((name, data))

    def names(self) -> list[str]:
        return [n for n, _ in self.events]

    def indexes(self) -> list[int]:
        return [d["index"] for _, d in self.events]


def decoded_duration_ms(event: dict[str, Any]) -> int:
    """Length of an ``audio_ready`` event's audio, measured from the WAV itself."""
    return wav_info(base64.b64decode(event["audio"])).duration_ms
