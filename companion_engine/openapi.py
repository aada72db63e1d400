"""Routes that describe themselves: OpenAPI 3 from the pydantic models they declare.

A route module declares its handlers on an ``ApiRoutes`` table::

    routes = ApiRoutes()

    @routes.post("/api/characters", body=CreateCharacter, response=CharacterCreated,
                 summary="Create a character", tags=["characters"])
    async def create_character(request: web.Request) -> web.Response:
        body = await read_body(request, CreateCharacter)
        ...

``build_spec(app)`` walks the router and turns those declarations into
``/openapi.json``; ``/docs`` serves Swagger UI from the ``swagger-ui-bundle``
package (no CDN).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from companion_engine import jsoninput
from companion_engine.errors import ApiError
from companion_engine.security import is_open

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ErrorBody(BaseModel):
    """The error shape of every 4xx/5xx response."""

    success: bool = False
    error: str
    detail: Any = None


@dataclass(slots=True)
class RouteDoc:
    """What a handler declares about itself for the OpenAPI document."""

    summary: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    body: type[BaseModel] | None = None
    #: Extra request content types accepted besides JSON (e.g. ``multipart/form-data``).
    body_content: dict[str, dict[str, Any]] = field(default_factory=dict)
    response: type[BaseModel] | None = None
    #: Non-JSON success responses: content type -> schema (e.g. ``text/event-stream``).
    response_content: dict[str, dict[str, Any]] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    errors: Sequence[int] = (400,)
    #: The success status (101 for a WebSocket upgrade).
    ok_status: int = 200
    #: Request headers the route reads (name -> {description, required, schema}).
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: OpenAPI ``x-`` extensions of the operation (e.g. ``{"x-endless": True}``).
    extensions: dict[str, Any] = field(default_factory=dict)
    #: The body of error responses (default ``ErrorBody``; the /v1 routes: OpenAI's).
    error_model: type[BaseModel] | None = None
    #: JSON schemas of path parameters (default: any string).
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)


class ApiRoutes(web.RouteTableDef):
    """A ``RouteTableDef`` whose decorators also record a ``RouteDoc`` on the handler."""

    def _doc(self, method: str, path: str, **doc: Any) -> Callable[[Handler], Handler]:
        def wrap(handler: Handler) -> Handler:
            handler.__route_doc__ = RouteDoc(**doc)  # type: ignore[attr-defined]
            self.route(method, path)(handler)
            return handler

        return wrap

    def get(self, path: str, **doc: Any) -> Callable[[Handler], Handler]:  # type: ignore[override]
        return self._doc("GET", path, **doc)

    def post(self, path: str, **doc: Any) -> Callable[[Handler], Handler]:  # type: ignore[override]
        return self._doc("POST", path, **doc)

    def put(self, path: str, **doc: Any) -> Callable[[Handler], Handler]:  # type: ignore[override]
        return self._doc("PUT", path, **doc)

    def patch(self, path: str, **doc: Any) -> Callable[[Handler], Handler]:  # type: ignore[override]
        return self._doc("PATCH", path, **doc)

    def delete(self, path: str, **doc: Any) -> Callable[[Handler], Handler]:  # type: ignore[override]
        return self._doc("DELETE", path, **doc)


def json_response(data: Any, status: int = 200, **kwargs: Any) -> web.Response:
    """JSON with non-ASCII kept as is (names, CJK), never HTML-escaped."""
    return web.json_response(
        data, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False), **kwargs
    )


def _validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def parse_model(model: type[M], data: Any, what: str = "request body") -> M:
    """Validate ``data`` or raise a 422 ``ApiError`` listing each problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = _validation_detail(exc)
        first = detail[0]
        msg = f"invalid {what}: {first['loc'] or 'body'}: {first['msg']}"
        raise ApiError(422, msg, detail) from None


async def read_json(request: web.Request) -> Any:
    """The parsed JSON body, or a 400 saying what is wrong with it (``jsoninput.loads``:
    malformed, not UTF-8, too deep, NaN/Infinity, huge integers, lone surrogates)."""
    if not request.can_read_body:
        raise ApiError(400, "request body is empty; send JSON")
    try:
        return jsoninput.loads(await request.read())
    except jsoninput.JSONInputError as exc:
        raise ApiError(400, f"request body: {exc.reason}") from None


async def read_body(request: web.Request, model: type[M]) -> M:
    """Read and validate a JSON body against ``model``."""
    return parse_model(model, await read_json(request))


# --- the OpenAPI document ---------------------------------------------------------------------


def _schema_ref(model: type[BaseModel], components: dict[str, Any], mode: str) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _path_params(path: str, schemas: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    params = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1].split(":", 1)[0]
            params.append({"name": name, "in": "path", "required": True,
                           "schema": schemas.get(name, {"type": "string"})})
    return params


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


ERROR_TEXT = {
    101: "Switching Protocols (the WebSocket is open)",
    400: "Bad request", 401: "Missing or wrong API key", 403: "Forbidden (origin or host)",
    404: "Not found", 409: "Conflict (stale version, or the id is taken)",
    413: "Body too large", 415: "Unsupported media type", 422: "Invalid body",
    429: "Too many requests",
    502: "Provider error", 503: "Unavailable",
}


def build_spec(app: web.Application, *, title: str, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for every route that carries a ``RouteDoc``."""
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    error_ref = _schema_ref(ErrorBody, components, "serialization")
    for route in app.router.routes():
        doc: RouteDoc | None = getattr(route.handler, "__route_doc__", None)
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if doc is None or path is None or route.method == "HEAD":
            continue
        op: dict[str, Any] = {
            "operationId": f"{route.method.lower()}_{route.handler.__name__}",
            "summary": doc.summary or (route.handler.__doc__ or "").strip().split("\n")[0],
            "tags": doc.tags,
            "responses": {},
        }
        if doc.description:
            op["description"] = doc.description
        op.update(doc.extensions)
        if is_open(path):
            op["security"] = []  # served without the API key
        params = _path_params(path, doc.path_params) + (
            _query_params(doc.query) if doc.query else [])
        params += [{"name": name, "in": "header", **spec} for name, spec in doc.headers.items()]
        if params:
            op["parameters"] = params
        content: dict[str, Any] = {}
        if doc.body is not None:
            schema = _schema_ref(doc.body, components, "validation")
            content["application/json"] = {"schema": schema}
        content.update(doc.body_content)
        if content:
            op["requestBody"] = {"required": True, "content": content}
        ok: dict[str, Any] = {"description": "OK" if doc.ok_status == 200 else
                              ERROR_TEXT.get(doc.ok_status, "Success")}
        ok_content: dict[str, Any] = {}
        if doc.response is not None:
            ok_content["application/json"] = {
                "schema": _schema_ref(doc.response, components, "serialization")
            }
        ok_content.update(doc.response_content)
        if ok_content:
            ok["content"] = ok_content
        op["responses"][str(doc.ok_status)] = ok
        errors_ref = (_schema_ref(doc.error_model, components, "serialization")
                      if doc.error_model is not None else error_ref)
        for status in sorted(set(doc.errors)):
            op["responses"][str(status)] = {
                "description": ERROR_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": errors_ref}},
            }
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # With server.api_key set, every operation not marked open needs the key.
        "security": [{"bearer": []}],
    }
