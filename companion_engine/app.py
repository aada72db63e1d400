"""The aiohttp application factory.

``create_app(config)`` loads the plugins, builds the profile's pipeline (a bad
profile fails here, before anything listens), creates the ``Engine`` and wires
shared resources as ``cleanup_ctx`` generators so each is closed exactly once.
Routes come from plugins (``register_routes``), built-in ones included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from loguru import logger

from companion_engine.cluster import shared_ctx, sync_middleware, worker_header
from companion_engine.config import AppConfig
from companion_engine.configload import load_profile
from companion_engine.engine import Engine
from companion_engine.keys import ENGINE, TALK_SESSIONS
from companion_engine.middlewares import error_middleware, request_id_middleware
from companion_engine.pipeline import build_pipeline
from companion_engine.plugins import PluginFailure, PluginHost
from companion_engine.reload import reload_ctx
from companion_engine.security import install_security

#: The largest body any route accepts (character uploads: 5 MB plus multipart framing).
#: JSON routes enforce the smaller ``server.max_body_bytes`` themselves.
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
CLIENT_MAX_SIZE = MAX_UPLOAD_BYTES + 64 * 1024


def create_app(
    config: AppConfig,
    *,
    plugins: PluginHost | None = None,
    profile: str | None = None,
) -> web.Application:
    """Build the application for ``config``; raises ``ConfigError`` for a bad profile."""
    host = plugins if plugins is not None else PluginHost.load(config.path("plugins"))
    prof, doc = load_profile(config, profile)
    pipeline = build_pipeline(prof, host, generation=1, doc=doc)
    engine = Engine(config, host, pipeline)

    app = web.Application(
        middlewares=[request_id_middleware, error_middleware],
        client_max_size=max(CLIENT_MAX_SIZE, config.server.max_body_bytes),
    )
    app[ENGINE] = engine
    app[TALK_SESSIONS] = set()
    app.on_shutdown.append(close_talk_sessions)
    install_security(app)
    app.middlewares.append(sync_middleware)
    app.on_shutdown.append(_closing)
    app.on_response_prepare.append(worker_header)
    app.cleanup_ctx.extend([http_session_ctx, store_ctx, characters_ctx, shared_ctx, llm_ctx,
                            pipeline_ctx, hooks_ctx, reload_ctx])
    for plugin, route in host.collect_routes(engine):
        try:
            app.router.add_routes([route])
        except Exception as exc:
            host._fail(PluginFailure(plugin, "hook:register_routes", f"{route}: {exc}"), exc)
    return app


async def close_talk_sessions(app: web.Application) -> None:
    """Open WebSocket sessions end (1001 going away) before the server waits for handlers."""
    for session in list(app[TALK_SESSIONS]):
        await session.shutdown()


async def _closing(app: web.Application) -> None:
    """The server stops accepting requests: tell long-lived streams to end now."""
    app[ENGINE].closing.set()


async def http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One shared client session for every outbound call (TTS servers, model listing)."""
    engine = app[ENGINE]
    # No cap on connections: every streamed turn holds one to its LLM server (the native
    # path), and aiohttp's default of 100 would queue the 101st concurrent turn.
    engine.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        timeout=aiohttp.ClientTimeout(total=60, connect=5))
    yield
    await engine.http.close()


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    from companion_engine.store import open_store

    engine = app[ENGINE]
    engine.store = await open_store(engine.config.store.url, engine.config.base_dir,
                                    cache_messages=engine.config.store.cache_messages)
    yield
    await engine.store.close()


async def characters_ctx(app: web.Application) -> AsyncIterator[None]:
    from companion_engine.cards.store import CharacterStore

    engine = app[ENGINE]
    engine.characters = CharacterStore(
        engine.config.path("characters"), engine.store, default_id=engine.profile.character
    )
    await engine.characters.load()
    yield


async def llm_ctx(app: web.Application) -> AsyncIterator[None]:
    """The LLM gateway. LiteLLM's slow import starts in the background, off start-up,
    and only when a model the profile names needs it (native-client models do not)."""
    from companion_engine.llm import LLMGateway, start_background_import

    engine = app[ENGINE]
    engine.llm = LLMGateway(engine)
    if engine.llm.needs_litellm():
        start_background_import()
    yield
    aclose = getattr(engine.llm, "aclose", None)
    if aclose is not None:
        await aclose()


async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    """The first pipeline's stages ``setup(engine)`` once the shared resources exist."""
    engine = app[ENGINE]
    await engine.pipeline.setup(engine)
    yield


async def hooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Plugins' ``startup`` after every resource exists; ``shutdown`` before they close."""
    engine = app[ENGINE]
    await engine.plugins.call("startup", engine=engine)
    yield
    await engine.plugins.call("shutdown", engine=engine)
    await engine.aclose()
    logger.debug("engine closed")
