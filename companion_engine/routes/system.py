"""Service routes: ``/``, ``/health``, ``/api/status``, ``/-/plugins``, ``/-/config``,
``/-/reload``, ``/openapi.json`` and the offline API browser at ``/docs``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from companion_engine import __version__, hookimpl
from companion_engine.cluster import broadcast_reload
from companion_engine.configload import redact
from companion_engine.engine import Engine
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.openapi import ApiRoutes, build_spec, json_response, live_schemas

SERVICE = "Companion Engine"
routes = ApiRoutes()


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RootInfo(Open):
    status: str
    service: str
    version: str
    timestamp: str


class LLMHealth(Open):
    provider: str
    #: False while the provider does not answer (or cannot be probed: see ``error``).
    connected: bool
    type: str
    #: Why it is not connected (``None`` when it is).
    error: str | None = None


class HealthReason(BaseModel):
    #: What is degraded: ``llm`` (the provider does not answer) or ``config`` (a reload
    #: was rejected; the previous config is still running).
    component: str
    reason: str


class Health(Open):
    #: ``healthy``, or ``degraded`` while anything in ``reasons`` holds.
    status: str
    version: str
    reasons: list[HealthReason]
    llm: LLMHealth
    tts: dict[str, Any]
    config: dict[str, Any]
    #: ``{id, pid, workers}``: which serving process answered.
    worker: dict[str, Any]
    #: This engine's name among the engines sharing its store.
    engine: str
    #: ``{backend, connected, limits}``: ``limits`` is ``cluster`` or ``process``.
    shared: dict[str, Any]
    timestamp: str


class StatusConfiguration(Open):
    max_tokens: int
    temperature: float


class Status(Open):
    status: str
    active_model: str
    active_provider: str
    configuration: StatusConfiguration
    timestamp: str


class PluginsListing(Open):
    plugins: list[dict[str, Any]]
    errors: list[dict[str, Any]]


class ReloadResult(Open):
    success: bool
    config: dict[str, Any]
    #: How many other engines received the reload broadcast (None: it could not be sent).
    broadcast: int | None = None


@routes.get("/", response=RootInfo, summary="Service information", tags=["service"], errors=())
async def root(request: web.Request) -> web.Response:
    return json_response({"status": "online", "service": SERVICE, "version": __version__,
                          "timestamp": now_iso()})


# --- provider reachability (cached: /health must stay fast) -----------------------------------

HEALTH_TTL_S = 5.0
#: ``llm.error`` of a provider with no listing endpoint to probe: unknown, not degraded.
NOT_PROBED = "this provider cannot be probed (it lists no models)"


@dataclass(slots=True)
class _Probe:
    at: float
    connected: bool
    error: str | None


async def provider_health(engine: Engine) -> dict[str, Any]:
    """``{provider, connected, type, error}`` of the active model, probed at most every
    ``HEALTH_TTL_S``; concurrent callers share one probe in flight."""
    target = engine.llm.target()
    cache: dict[str, _Probe] = engine.stash.setdefault("health_probe", {})
    inflight: dict[str, asyncio.Future[_Probe]] = engine.stash.setdefault(
        "health_probe_inflight", {})
    hit = cache.get(target.model)
    if hit is None or time.monotonic() - hit.at > HEALTH_TTL_S:
        future = inflight.get(target.model)
        if future is None:
            future = inflight[target.model] = asyncio.ensure_future(
                _probe(engine, target.model))
            future.add_done_callback(lambda _f, m=target.model: inflight.pop(m, None))
        hit = cache[target.model] = await asyncio.shield(future)
    return {"provider": engine.active_model, "connected": hit.connected, "type": target.type,
            "error": hit.error}


async def _probe(engine: Engine, model: str) -> _Probe:
    status = await engine.llm.probe_model(model)
    if status is None:
        return _Probe(time.monotonic(), False, NOT_PROBED)
    return _Probe(time.monotonic(), status.connected, None if status.connected else (
        status.error or "the provider did not answer"))


def llm_problem(llm: dict[str, Any]) -> str | None:
    """Why chats cannot work right now, from ``provider_health`` (None: they can, or the
    provider cannot be probed and so is not blamed)."""
    if llm["connected"] or not llm["error"] or llm["error"] == NOT_PROBED:
        return None
    return (f"LLM provider for {llm['provider']} is unreachable: {llm['error']}; chats fail "
            "until it answers")


def health_reasons(llm: dict[str, Any], last_error: str | None) -> list[dict[str, str]]:
    """What makes the service degraded right now (empty: healthy)."""
    reasons = []
    problem = llm_problem(llm)
    if problem is not None:
        reasons.append({"component": "llm", "reason": problem})
    if last_error is not None:
        first = last_error.strip().splitlines()[0] if last_error.strip() else last_error
        reasons.append({"component": "config", "reason": f"the last reload was rejected "
                        f"(still running the previous config): {first}"})
    return reasons


@routes.get("/health", response=Health, summary="Health, LLM reachability and reload status",
            tags=["service"], errors=())
async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    tts = engine.pipeline.tts
    status = engine.reload_status
    llm = await provider_health(engine)
    reasons = health_reasons(llm, status.last_error)
    if not engine.shared.connected:
        reasons.append({"component": "store", "reason": "the shared store (Redis) is "
                        "unreachable; requests that need it answer 503 until it is back"})
    return json_response({
        "status": "degraded" if reasons else "healthy",
        "version": __version__,
        "reasons": reasons,
        "llm": llm,
        "tts": {"engine": tts.name, "enabled": engine.profile.speech.enabled,
                # A backend speaking through its fallback says why (piper_local -> espeak).
                **({"fallback": reason} if (reason := getattr(tts, "fallback_reason", None))
                   else {})},
        "config": status.as_dict(),
        # Which process answered, and what it shares with the others (docs/deploy.md).
        "worker": engine.worker.as_dict(),
        "engine": engine.engine_id,
        "shared": engine.shared.status(),
        "timestamp": now_iso(),
    })


@routes.get("/api/status", response=Status, tags=["service"], errors=(),
            summary="Legacy status (the original frontend polls it)")
async def api_status(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    llm = engine.profile.llm
    return json_response({
        "status": "online",
        "active_model": engine.active_model,
        "active_provider": engine.llm.target().provider,
        "configuration": {"max_tokens": llm.max_tokens, "temperature": llm.temperature,
                          "timeout_ms": int(llm.timeout_s * 1000)},
        "profile": engine.profile.name,
        "character": engine.characters.active_id,
        "timestamp": now_iso(),
    })


@routes.get("/-/plugins", response=PluginsListing, summary="Loaded plugins and load failures",
            tags=["introspection"])
async def plugins(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    listing = engine.plugins.listing()
    if engine.reloader is not None:  # a changed file the last reload refused to load
        listing["errors"] += [{**f.as_dict(), "rejected_reload": True}
                              for f in engine.reloader.rejected_plugins]
    return json_response(listing)


@routes.get("/-/config", summary="The running config and profile, secrets redacted",
            tags=["introspection"])
async def config_view(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return json_response({
        "config": redact(engine.config.model_dump(mode="json")),
        "profile": {"name": engine.profile.name,
                    **redact(engine.profile.model_dump(mode="json"))},
        "generation": engine.reload_status.generation,
    })


@routes.post("/-/reload", response=ReloadResult, tags=["introspection"], errors=(422,),
             summary="Reload config, profile and characters now, on every engine")
async def reload_now(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    if engine.reloader is None:
        raise ApiError(503, "reload is not available in this server")
    await engine.reloader.reload(reason="POST /-/reload")
    # The other engines on this store (workers, or hosts on one Redis) reload too.
    others = await broadcast_reload(engine)
    status = engine.reload_status
    if status.last_error:
        raise ApiError(422, "reload failed; the running config was kept",
                       {**status.as_dict(), "broadcast": others})
    return json_response({"success": True, "config": status.as_dict(), "broadcast": others})


# --- OpenAPI and the API browser ---------------------------------------------------------------


@routes.get("/openapi.json", summary="OpenAPI 3 description of this API", tags=["service"],
            errors=())
async def openapi_json(request: web.Request) -> web.Response:
    schemas = await live_schemas(request.app[ENGINE])
    return json_response(build_spec(request.app, title=SERVICE, version=__version__,
                                    schemas=schemas))

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Companion Engine API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""

#: ``validatorUrl: null``: Swagger UI's default puts a badge image from an outside host
#: (validator.swagger.io, sent our spec's URL) on the page; the API browser stays offline.
DOCS_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
  deepLinking: true, validatorUrl: null, presets: [SwaggerUIBundle.presets.apis]});
"""


def swagger_dir() -> Path:
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


@routes.get("/docs", summary="API browser (offline Swagger UI)", tags=["service"], errors=())
async def docs(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html")


async def docs_init(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_INIT, content_type="application/javascript")


async def docs_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in {"swagger-ui.css", "swagger-ui-bundle.js"}:
        raise web.HTTPNotFound()
    path = swagger_dir() / name
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


@hookimpl
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    return [*routes, web.get("/docs/init.js", docs_init),
            web.get("/docs/assets/{name}", docs_asset)]
