"""How one engine stays in step with the others that serve the same store.

Engines share a store when ``store.url`` is Redis or ``server.workers`` > 1.
Then three settings are read from the store at the start of each request
(``Store.get_settings``; on Redis, a request with a rate limit or a stream slot reads
them in the same round trip as those, ``SharedState.admit``) instead of trusted from
memory:

- ``active_character``: ``POST /api/characters/{id}/activate`` on any engine;
- ``model_override``: ``POST /api/models/switch`` on any engine;
- ``characters_generation``: changed by every card written through the API, so an
  engine that sees a new value rescans the (shared) ``characters/`` folder before
  it answers: an upload on engine A is listed by engine B on the very next request.

When the store cannot be read, the last values are kept and the request goes on;
routes that need the store itself answer 503. ``POST /-/reload`` is broadcast
(``SharedState.publish``) and every engine that receives it reloads.

With one engine on SQLite nothing is read per request: this process is the only writer.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger

from companion_engine.keys import ENGINE
from companion_engine.shared import Event, is_outage, open_shared_state

if TYPE_CHECKING:
    from companion_engine.engine import Engine

ACTIVE_CHARACTER = "active_character"
MODEL_OVERRIDE = "model_override"
CHARACTERS_GENERATION = "characters_generation"
SYNCED = (ACTIVE_CHARACTER, MODEL_OVERRIDE, CHARACTERS_GENERATION)
#: Paths that read nothing shared (static files of the API browser).
UNSYNCED_PREFIXES = ("/docs/",)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Which serving process this is (``/health`` reports it)."""

    id: int = 0
    count: int = 1
    pid: int = 0

    @classmethod
    def from_env(cls) -> WorkerInfo:
        return cls(int(os.environ.get("COMPANION_WORKER_ID", "0")),
                   int(os.environ.get("COMPANION_WORKERS", "1")), os.getpid())

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.pid, "workers": self.count}


def engine_id(worker: WorkerInfo) -> str:
    """A name for this engine that differs between hosts, processes and restarts."""
    return f"{socket.gethostname()}:{worker.pid}:{uuid.uuid4().hex[:6]}"


def store_is_shared(engine: Engine) -> bool:
    """True when another process may write the store this engine reads."""
    return engine.shared.cluster_wide or engine.worker.count > 1


# --- per request ------------------------------------------------------------------------------


#: The shared settings read with the request's admission (``security_middleware``), when
#: the shared state read them: ``sync_middleware`` then reads nothing itself.
SYNCED_SETTINGS = web.RequestKey("synced_settings", dict[str, Any])


def settings_to_sync(engine: Engine, request: web.Request) -> tuple[str, ...]:
    """The settings ``sync_middleware`` needs for ``request`` (none: it reads nothing)."""
    if engine.needs_sync and not request.path.startswith(UNSYNCED_PREFIXES):
        return SYNCED
    return ()


async def sync(engine: Engine, values: dict[str, Any] | None = None) -> None:
    """Adopt the shared settings (and rescan the cards when another engine changed them);
    ``values``: already read (``SYNCED_SETTINGS``)."""
    if values is None:
        try:
            values = await engine.store.get_settings(SYNCED)
        except Exception as exc:
            if not is_outage(exc):
                raise
            return  # keep what we knew; what needs the store answers 503 by itself
    override = values.get(MODEL_OVERRIDE)
    engine.model_override = override if isinstance(override, str) and override else None
    engine.characters.adopt_active(values.get(ACTIVE_CHARACTER))
    generation = values.get(CHARACTERS_GENERATION)
    if generation is not None and generation != engine.characters_generation:
        engine.characters_generation = generation
        await engine.characters.rescan()


WORKER_HEADER = "X-Companion-Worker"


async def worker_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every response says which worker answered (``server.workers`` > 1)."""
    worker = request.app[ENGINE].worker
    if worker.count > 1:
        response.headers[WORKER_HEADER] = str(worker.id)


@web.middleware
async def sync_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    engine = request.app[ENGINE]
    if settings_to_sync(engine, request):
        await sync(engine, request.get(SYNCED_SETTINGS))
    return await handler(request)


# --- writes every engine must see -------------------------------------------------------------


async def switch_model(engine: Engine, model: str | None) -> None:
    """Choose the model for every engine (``None``: back to the profile's ``llm.model``)."""
    value = None if model == engine.profile.llm.model else model
    await engine.store.set_setting(MODEL_OVERRIDE, value)
    engine.model_override = value


async def characters_changed(engine: Engine) -> None:
    """A card was written through this engine: the others rescan."""
    if not engine.needs_sync:
        return
    generation = uuid.uuid4().hex
    engine.characters_generation = generation  # we already know our own change
    try:
        await engine.store.set_setting(CHARACTERS_GENERATION, generation)
    except Exception as exc:
        if not is_outage(exc):
            raise
        logger.warning("could not tell the other engines about a card change ({}); they "
                       "see it at their next rescan", exc)


async def broadcast_reload(engine: Engine) -> int | None:
    """Ask every other engine to reload; how many heard it (None: the broadcast failed)."""
    try:
        return await engine.shared.publish({"type": "reload"})
    except Exception as exc:
        if not is_outage(exc):
            raise
        logger.warning("reload broadcast failed: {}", exc)
        return None


async def on_event(engine: Engine, event: Event) -> None:
    """A broadcast from another engine."""
    if event.get("type") == "reload" and engine.reloader is not None:
        await engine.reloader.reload(reason=f"broadcast from {event.get('origin', '?')}")


# --- the app's cleanup context ----------------------------------------------------------------


async def shared_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the shared state (after the store) and listen for broadcasts."""
    engine = app[ENGINE]
    engine.shared = await open_shared_state(
        engine.config.store.url, engine_id=engine.engine_id, store=engine.store,
        bus=engine.link, max_clients=engine.config.rate_limit.max_clients)
    engine.needs_sync = store_is_shared(engine)
    engine.characters.on_change = lambda: characters_changed(engine)

    async def handle(event: Event) -> None:
        await on_event(engine, event)

    await engine.shared.start(handle)
    if engine.needs_sync:
        values = await engine.store.get_settings([CHARACTERS_GENERATION, MODEL_OVERRIDE])
        engine.characters_generation = values.get(CHARACTERS_GENERATION)
        await sync(engine)
    else:
        override = await engine.store.get_setting(MODEL_OVERRIDE)
        engine.model_override = override if isinstance(override, str) else None
    yield
    await engine.shared.close()
