"""The engine: the one object routes, stages and plugins reach the server through.

It owns the config, the plugin host, the current pipeline (swapped atomically on
reload), the stores, the LLM gateway and the shared HTTP session. Routes get it
with ``request.app[ENGINE]``; host hooks receive it as ``engine``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from companion_engine.cluster import WorkerInfo, engine_id

if TYPE_CHECKING:
    import aiohttp

    from companion_engine.cards.store import CharacterStore
    from companion_engine.config import AppConfig, Profile
    from companion_engine.llm import LLMGateway
    from companion_engine.pipeline import Pipeline
    from companion_engine.plugins import PluginHost
    from companion_engine.reload import Reloader
    from companion_engine.shared import SharedState
    from companion_engine.store import Store
    from companion_engine.supervisor import WorkerLink


@dataclass
class ReloadStatus:
    """What ``/health`` reports under ``config``."""

    generation: int = 0
    last_reload: float | None = None
    last_error: str | None = None
    restart_required: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "last_reload": self.last_reload,
                "last_error": self.last_error, "restart_required": self.restart_required}


class Engine:
    """Shared state of one running server."""

    def __init__(self, config: AppConfig, plugins: PluginHost, pipeline: Pipeline) -> None:
        self.config = config
        self.plugins = plugins
        self._pipeline = pipeline
        self._reload_status = ReloadStatus(generation=pipeline.generation)
        self._status_changed = asyncio.Event()
        #: Set when the server starts shutting down, so long-lived streams (``/-/events``)
        #: end instead of holding the shutdown up.
        self.closing = asyncio.Event()
        self.started_at = time.time()
        # Set up by the app's cleanup contexts.
        self.http: aiohttp.ClientSession
        self.store: Store
        self.characters: CharacterStore
        self.llm: LLMGateway
        #: Set by the reload machinery (``companion_engine.reload``) when it runs.
        self.reloader: Reloader | None = None
        #: Model chosen with /api/models/switch; None means the profile's llm.model.
        #: Kept in the store (``companion_engine.cluster``), so every engine agrees.
        self.model_override: str | None = None
        #: Which serving process this is, and this engine's name among its peers.
        self.worker = WorkerInfo.from_env()
        self.engine_id = engine_id(self.worker)
        #: Rate limits, stream slots and broadcasts shared with the other engines.
        self.shared: SharedState
        #: True when other processes write the store too: settings are read per request.
        self.needs_sync = False
        #: The card folder's generation this engine has seen (``cluster``: a peer's write
        #: changes it in the store, and engines that see a new one rescan).
        self.characters_generation: str | None = None
        #: The line to the supervisor when this is one of ``server.workers``.
        self.link: WorkerLink | None = None
        self._closing: set[asyncio.Task[None]] = set()
        #: Pipelines of profiles other than the active one, by name (``lease(profile=)``).
        self._profiles: dict[str, Pipeline] = {}
        self._profiles_lock = asyncio.Lock()
        #: Small per-engine caches and plugin state, keyed by owner name.
        self.stash: dict[str, Any] = {}

    # --- the current pipeline -------------------------------------------------------------

    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline

    @property
    def profile(self) -> Profile:
        return self._pipeline.profile

    @property
    def reload_status(self) -> ReloadStatus:
        """The outcome of the last reload (``/health`` ``config``); replaced, never edited."""
        return self._reload_status

    @reload_status.setter
    def reload_status(self, status: ReloadStatus) -> None:
        self._reload_status = status
        changed, self._status_changed = self._status_changed, asyncio.Event()
        changed.set()

    def status_changed(self) -> asyncio.Event:
        """An event set the next time ``reload_status`` is replaced (take it, then read the
        status, then wait: no change is missed)."""
        return self._status_changed

    @property
    def active_model(self) -> str:
        return self.model_override or self.profile.llm.model

    @asynccontextmanager
    async def lease(self, profile: str | None = None) -> AsyncIterator[Pipeline]:
        """Hold the current pipeline (or that of another ``profile``) for one turn; a
        reload never closes it under you."""
        pipeline = self._pipeline
        if profile is not None and profile != pipeline.profile.name:
            pipeline = await self._profile_pipeline(profile)
        pipeline.users += 1
        try:
            yield pipeline
        finally:
            pipeline.users -= 1
            if pipeline.retired and pipeline.users == 0:
                await pipeline.aclose()

    def swap_pipeline(self, new: Pipeline) -> Pipeline:
        """Make ``new`` current in one step; the old one closes when its last turn ends.

        Pipelines of other profiles (``lease(profile=...)``) are retired with it: they
        are rebuilt, with the new config and plugins, when next asked for.
        """
        old, self._pipeline = self._pipeline, new
        self._retire(old)
        others, self._profiles = self._profiles, {}
        for pipeline in others.values():
            self._retire(pipeline)
        return old

    def _retire(self, pipeline: Pipeline) -> None:
        pipeline.retired = True
        if pipeline.users == 0 and pipeline is not self._pipeline:
            task = asyncio.get_running_loop().create_task(pipeline.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _profile_pipeline(self, name: str) -> Pipeline:
        """The pipeline of profile ``name``, built (and set up) once per generation.

        Raises ``ConfigError`` when the profile is missing or invalid.
        """
        from companion_engine.configload import load_profile
        from companion_engine.pipeline import build_pipeline

        async with self._profiles_lock:
            pipeline = self._profiles.get(name)
            if pipeline is not None:
                return pipeline
            generation = self._pipeline.generation
            prof, doc = await asyncio.to_thread(load_profile, self.config, name)
            pipeline = build_pipeline(prof, self.plugins, generation=generation, doc=doc)
            await pipeline.setup(self)
            if generation != self._pipeline.generation:  # a reload happened meanwhile
                self._retire(pipeline)
                return pipeline
            self._profiles[name] = pipeline
            return pipeline

    def plugin_config(self, name: str) -> dict[str, Any]:
        """The ``plugins: {name: ...}`` settings of ``companion.yaml`` for one plugin."""
        value = self.config.plugins.get(name) or {}
        return value if isinstance(value, dict) else {"value": value}

    async def aclose(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for pipeline in [self._pipeline, *self._profiles.values()]:
            try:
                await pipeline.aclose()
            except Exception as exc:  # pragma: no cover - stage close is already isolated
                logger.warning("closing pipeline failed: {}", exc)
