"""Models: what the configured providers offer, whether they answer, and switching."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from companion_engine import hookimpl
from companion_engine.chat.sse import timestamp
from companion_engine.cluster import switch_model as choose_model
from companion_engine.engine import Engine
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.llm import ModelError, start_background_import, validate_model
from companion_engine.openapi import ApiRoutes, json_response, parse_model, read_json
from companion_engine.patterns import ModelName

routes = ApiRoutes()


class ModelList(BaseModel):
    success: bool
    data: list[dict[str, Any]]
    count: int
    active_model: str
    timestamp: str


class ModelsStatus(BaseModel):
    status: str
    active_model: str
    active_provider: dict[str, Any]
    providers: list[dict[str, Any]]
    configuration: dict[str, Any]
    timestamp: str


class SwitchModel(BaseModel):
    """``new_model`` as a JSON body (the query parameter works too)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    new_model: ModelName


class SwitchQuery(BaseModel):
    #: Legacy: the model in the query instead of the body (it wins over the body's).
    new_model: ModelName | None = None


class Switched(BaseModel):
    success: bool
    message: str
    active_model: str
    previous_model: str
    connected: bool | None
    timestamp: str


@routes.get("/api/models", response=ModelList, tags=["models"],
            summary="Models the configured providers offer (unreachable ones are left out)")
async def list_models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    models = await engine.llm.list_models()
    return json_response({"success": True, "data": models, "count": len(models),
                          "active_model": engine.active_model, "timestamp": timestamp()})


@routes.get("/api/models/status", response=ModelsStatus, tags=["models"],
            summary="Reachability of each configured provider")
async def models_status(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    providers = await engine.llm.status()
    target = engine.llm.target()
    active = await engine.llm.probe_model(engine.active_model)
    llm = engine.profile.llm
    return json_response({
        "status": "online",
        "active_model": engine.active_model,
        "active_provider": {
            "name": target.provider, "type": target.type, "api_base": target.api_base,
            "connected": bool(active and active.connected),
            "details": active.as_dict() if active else {"error": "this provider cannot be probed"},
        },
        "providers": [p.as_dict() for p in providers],
        "configuration": {"max_tokens": llm.max_tokens, "temperature": llm.temperature,
                          "timeout_ms": int(llm.timeout_s * 1000)},
        "timestamp": timestamp(),
    })


async def _requested_model(request: web.Request) -> str:
    """``new_model`` from the query (legacy; it wins), else from the JSON body. Each one
    sent is checked, so a bad body is refused even next to a good query."""
    sent: list[str] = []
    if "new_model" in request.query:
        sent.append(request.query["new_model"])
    if request.can_read_body and request.content_length != 0:
        sent.append(parse_model(SwitchModel, await read_json(request)).new_model)
    if not sent:
        raise ApiError(400, "send new_model in the query (?new_model=...) or the JSON body "
                       '({"new_model": "..."})')
    try:
        checked = [await validate_model(model) for model in sent]
    except ModelError as exc:
        raise ApiError(400, str(exc)) from None
    return checked[0]


@routes.post("/api/models/switch", body=SwitchModel, body_required=False, query=SwitchQuery,
             response=Switched,
             tags=["models"], summary="Switch the active model", errors=(400, 422, 503),
             description="`new_model` in the JSON body (or, legacy, in the query). 400: a "
                         "provider LiteLLM does not know.")
async def switch_model(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    model = await _requested_model(request)
    previous = engine.active_model
    await choose_model(engine, model)  # every engine on the store follows
    if engine.llm.needs_litellm():
        start_background_import()  # its first turn should not wait for the import
    probe = await engine.llm.probe_model(model)
    return json_response({
        "success": True, "message": f"Switched to {model}", "active_model": engine.active_model,
        "previous_model": previous, "connected": probe.connected if probe else None,
        "timestamp": timestamp(),
    })


# The original frontend switches through the chat router.
routes.post("/api/chat/switch", body=SwitchModel, body_required=False, query=SwitchQuery,
            response=Switched, tags=["models"], errors=(400, 422, 503),
            summary="Switch the active model (alias of /api/models/switch)")(switch_model)


@hookimpl
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    return list(routes)
