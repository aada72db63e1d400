"""Routes that describe themselves: OpenAPI 3 from the pydantic models they declare.

A route module declares its handlers on an ``ApiRoutes`` table::

    routes = ApiRoutes(path_params={"id": ref("CharacterId")})

    @routes.post("/api/characters", body=CreateCharacter, response=CharacterCreated,
                 summary="Create a character", tags=["characters"])
    async def create_character(request: web.Request) -> web.Response:
        body = await read_body(request, CreateCharacter)
        ...

``build_spec(app)`` walks the router and turns those declarations into
``/openapi.json``; ``/docs`` serves Swagger UI from the ``swagger-ui-bundle``
package (no CDN). The document describes this server as it runs: the API key
(security, 401), the rate-limited routes (429), the body caps (413) and the names
whose valid values depend on it (``live_schemas``: LiteLLM's providers, the audio
formats this install encodes, the TTS backend's voices) follow its config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from companion_engine import jsoninput
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.patterns import (
    AUDIO_FORMATS,
    NAMED,
    SCHEMAS,
    audio_format_schema,
    backend_voice_schema,
    model_name_schema,
)
from companion_engine.security import RATE_LIMITED, STREAM_ROUTES, UNSAFE_METHODS, is_open

if TYPE_CHECKING:
    from companion_engine.engine import Engine

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REF = "#/components/schemas/{model}"


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
    #: False when the route also works without a body (its defaults apply).
    body_required: bool = True
    #: Extra request content types accepted besides JSON (e.g. ``multipart/form-data``).
    body_content: dict[str, dict[str, Any]] = field(default_factory=dict)
    response: type[BaseModel] | None = None
    #: Non-JSON success responses: content type -> schema (e.g. ``text/event-stream``).
    response_content: dict[str, dict[str, Any]] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    #: Statuses the handler itself answers besides 200. Those the server adds to every
    #: route (400/413/422 for a body, 401 with a key, 404 for a path id, 429 where it
    #: is rate limited, ...) are documented without being listed here.
    errors: Sequence[int] = ()
    #: The body of error responses (default ``ErrorBody``; the /v1 routes: OpenAI's).
    error_model: type[BaseModel] | None = None
    #: JSON schemas of path parameters (default: the table's, else any string).
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The success status (101 for a WebSocket upgrade).
    ok_status: int = 200
    #: Request headers the route reads (name -> {description, required, schema}).
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: OpenAPI ``x-`` extensions of the operation (e.g. ``{"x-endless": True}``).
    extensions: dict[str, Any] = field(default_factory=dict)


class ApiRoutes(web.RouteTableDef):
    """A ``RouteTableDef`` whose decorators also record a ``RouteDoc`` on the handler.

    ``path_params`` types the path parameters of every route of the table (a route's own
    ``path_params=`` wins), e.g. ``{"id": ref("CharacterId")}``.
    """

    def __init__(self, *, path_params: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.path_params = path_params or {}

    def _doc(self, method: str, path: str, **doc: Any) -> Callable[[Handler], Handler]:
        doc["path_params"] = {**self.path_params, **doc.get("path_params", {})}

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


def not_null(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of an optional field that may be left out but not sent as
    ``null``: the null choice and the default leave its schema."""
    choices = schema.pop("anyOf", None)
    schema.pop("default", None)
    if choices is not None:
        rest = [c for c in choices if c != {"type": "null"}]
        schema.update(rest[0] if len(rest) == 1 else {"anyOf": rest})


def integral(data: Any) -> Any:
    """``data`` with every float that has no fraction as an int: JSON has one number type,
    and JSON Schema's ``integer`` is any number without a fraction (``3.0`` too)."""
    if isinstance(data, float):
        return int(data) if data.is_integer() else data
    if isinstance(data, dict):
        return {k: integral(v) for k, v in data.items()}
    if isinstance(data, list):
        return [integral(v) for v in data]
    return data


def parse_model(model: type[M], data: Any, what: str = "request body", *,
                strict: bool | None = None) -> M:
    """Validate ``data`` or raise a 422 ``ApiError`` listing each problem (``strict=False``:
    text read as the fields' types, as form fields and query parameters are)."""
    try:
        return model.model_validate(integral(data), strict=strict)
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


ERROR_TEXT = {
    101: "Switching Protocols (the WebSocket is open)",
    400: "Bad request: malformed HTTP (as text), JSON or id",
    401: "Missing or wrong API key",
    403: "Forbidden: a cross-site write, or (without an API key) a host name that is not "
         "loopback",
    404: "Not found", 409: "Conflict (stale version, or the id is taken)",
    413: "Body too large", 415: "Unsupported media type", 422: "Invalid body or query",
    429: "Too many requests (rate limit, open streams, or wrong API keys)",
    500: "A stage of the pipeline failed", 502: "Provider error",
    503: "Unavailable (the provider or the shared store)", 504: "The provider timed out",
}
#: Response headers that come with a status.
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"required": True, "description": "Seconds to wait",
                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}
#: Error responses that may also come as text: the HTTP parser refuses what it cannot read
#: (a request line or header over 8190 bytes, a bad chunk) before the app sees it.
ERROR_CONTENT = {400: {"text/plain": {"schema": {"type": "string"}}}}
#: Named schemas route modules add with ``add_schemas`` (the card shapes, ...); the
#: document carries those its routes refer to.
ADDED_SCHEMAS: dict[str, dict[str, Any]] = {}


#: Functions that give named schemas whose values depend on the install (a route's formats
#: that need PyAV, ...): asked when the document is built.
LIVE_SCHEMAS: list[Callable[[], dict[str, dict[str, Any]]]] = []


def add_schemas(schemas: dict[str, dict[str, Any]]) -> None:
    """Name schemas that routes refer to with ``patterns.ref(name)`` (raw JSON Schema, for a
    body no single pydantic model describes)."""
    ADDED_SCHEMAS.update(schemas)


def add_live_schemas(make: Callable[[], dict[str, dict[str, Any]]]) -> None:
    """Like ``add_schemas``, for schemas only the running install can write: ``make`` is
    called for each document (its result also serves as the fallback)."""
    LIVE_SCHEMAS.append(make)


#: What ``{name}`` in an aiohttp route matches when a route does not say.
ANY_SEGMENT = {"type": "string", "pattern": "^[^/]+$"}


def operation_id(method: str, path: str) -> str:
    """``post_api_chat_switch``, ``get_api_characters_by_id_export``: readable, stable
    (method + path, nothing else) and so unique."""
    words = [method.lower()]
    for part in path.strip("/").split("/"):
        if part.startswith("{") and part.endswith("}"):
            words.append("by_" + part[1:-1].split(":", 1)[0])
        elif part:
            words.append(part)
    text = "_".join(words) if len(words) > 1 else f"{words[0]}_root"
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _path_names(path: str) -> list[str]:
    return [part[1:-1].split(":", 1)[0] for part in path.split("/")
            if part.startswith("{") and part.endswith("}")]


def without_null(prop: dict[str, Any]) -> dict[str, Any]:
    """The schema of a field sent as text (a query parameter, a form field): present or
    absent, never ``null``, so the null choice (and a null default) leaves it."""
    prop = {k: v for k, v in prop.items() if k != "title"}
    choices = prop.get("anyOf")
    if choices is not None:
        rest = [c for c in choices if c != {"type": "null"}]
        prop = {k: v for k, v in prop.items() if k not in ("anyOf", "default")
                or (k == "default" and v is not None)}
        prop.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
    return prop


def _named_refs(node: Any) -> Any:
    """``{"x-named": N, ...}`` (what the annotated types of ``patterns`` write) becomes a
    ``$ref`` to the named schema N, keeping the siblings (default, description)."""
    if isinstance(node, list):
        return [_named_refs(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _named_refs(v) for k, v in node.items() if k != NAMED}
    if NAMED in node:
        out = {"$ref": REF.format(model=node[NAMED]),
               **{k: v for k, v in out.items() if k not in ("title", "type")}}
    return out


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


@dataclass(slots=True)
class _Route:
    method: str
    path: str
    canonical: str
    handler: Handler
    doc: RouteDoc


def documented_routes(app: web.Application) -> list[_Route]:
    """Every route that carries a ``RouteDoc`` (HEAD left out: aiohttp adds it to GETs)."""
    out = []
    for route in app.router.routes():
        doc: RouteDoc | None = getattr(route.handler, "__route_doc__", None)
        resource = route.resource
        info = resource.get_info() if resource else {}
        path = info.get("formatter") or info.get("path")
        if doc is None or path is None or resource is None or route.method == "HEAD":
            continue
        out.append(_Route(route.method, path, resource.canonical, route.handler, doc))
    return out


def _error_statuses(r: _Route, *, key: bool, loopback: bool) -> set[int]:
    """What this route can answer besides success: its own, and what every route gets."""
    doc, statuses = r.doc, set(r.doc.errors) | {400}  # any request can be malformed HTTP
    json_body = doc.body is not None or "application/json" in doc.body_content
    if json_body or doc.body_content:
        statuses |= {413}
    if json_body:
        statuses |= {400, 422}  # malformed JSON; a body that breaks its schema
    if doc.query is not None:
        statuses.add(422)
    if _path_names(r.path):
        statuses |= {400, 404}  # a malformed id, a missing one
    protected = not is_open(r.path)
    if protected and key:
        statuses |= {401, 429}  # no or a wrong key; wrong keys are rate limited
    else:
        statuses.discard(401)  # no key is asked for
    if protected and not key and not loopback:
        statuses.add(503)  # the key was removed while listening beyond loopback
    if (r.method, r.canonical) in RATE_LIMITED | STREAM_ROUTES:
        statuses.add(429)
    if r.method in UNSAFE_METHODS or not key:
        statuses.add(403)
    return statuses


def build_spec(app: web.Application, *, title: str, version: str,
               schemas: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """OpenAPI 3.1 for every route that carries a ``RouteDoc``, as this server runs.

    ``schemas``: the named schemas whose values depend on the running server
    (``live_schemas``); without them the looser fixed forms are used.
    """
    from companion_engine.cli import is_loopback

    config = app[ENGINE].config
    key = bool(config.server.api_key)
    loopback = is_loopback(config.server.host)
    routes = documented_routes(app)

    # Every model at once: pydantic names them apart (same class name in two modules,
    # a model read and written) and puts what they share in one place.
    wanted: dict[tuple[type[BaseModel], Literal["validation", "serialization"]], None] = {
        (ErrorBody, "serialization"): None}
    for r in routes:
        d = r.doc
        for model, mode in ((d.body, "validation"), (d.query, "validation"),
                            (d.response, "serialization"), (d.error_model, "serialization")):
            if model is not None:
                wanted[(model, mode)] = None  # type: ignore[index]
    keys, defs = models_json_schema(list(wanted), ref_template=REF)
    components: dict[str, Any] = {**fallback_schemas(), **(schemas or {}),
                                  **defs.get("$defs", {})}

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return keys[(model, mode)]  # type: ignore[index]

    def definition(model: type[BaseModel]) -> dict[str, Any]:
        name = ref(model, "validation")["$ref"].rsplit("/", 1)[1]
        return components[name]

    paths: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for r in routes:
        doc = r.doc
        op_id = operation_id(r.method, r.path)
        if op_id in seen:
            raise ValueError(f"{r.method} {r.path} and {seen[op_id]} share operationId {op_id}")
        seen[op_id] = f"{r.method} {r.path}"
        op: dict[str, Any] = {
            "operationId": op_id,
            "summary": doc.summary or (r.handler.__doc__ or "").strip().split("\n")[0],
            "tags": doc.tags,
            "responses": {},
        }
        if doc.description:
            op["description"] = doc.description
        op.update(doc.extensions)
        if not key or is_open(r.path):
            op["security"] = []  # served without the API key
        params = [{"name": name, "in": "path", "required": True,
                   "schema": doc.path_params.get(name, ANY_SEGMENT)}
                  for name in _path_names(r.path)]
        if doc.query is not None:
            qs = definition(doc.query)
            required = set(qs.get("required", []))
            params += [{"name": name, "in": "query", "required": name in required,
                        "schema": without_null(prop)}
                       for name, prop in qs.get("properties", {}).items()]
        params += [{"name": name, "in": "header", **spec} for name, spec in doc.headers.items()]
        if params:
            op["parameters"] = params
        content: dict[str, Any] = {}
        if doc.body is not None:
            content["application/json"] = {"schema": ref(doc.body, "validation")}
        content.update(doc.body_content)
        if content:
            op["requestBody"] = {"required": doc.body_required, "content": content}
        ok: dict[str, Any] = {"description": "OK" if doc.ok_status == 200 else
                              ERROR_TEXT.get(doc.ok_status, "Success")}
        ok_content: dict[str, Any] = {}
        if doc.response is not None:
            ok_content["application/json"] = {"schema": ref(doc.response, "serialization")}
        ok_content.update(doc.response_content)
        if ok_content:
            ok["content"] = ok_content
        op["responses"][str(doc.ok_status)] = ok
        error = ref(doc.error_model or ErrorBody, "serialization")
        for status in sorted(_error_statuses(r, key=key, loopback=loopback)):
            response: dict[str, Any] = {
                "description": ERROR_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": error}, **ERROR_CONTENT.get(status, {})},
            }
            if status in ERROR_HEADERS:
                response["headers"] = ERROR_HEADERS[status]
            op["responses"][str(status)] = response
        paths.setdefault(r.path, {})[r.method.lower()] = op

    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": (
            "Every operation not marked open needs `Authorization: Bearer <server.api_key>`."
            if key else "This server runs without an API key: it answers loopback clients "
                        "only, and needs no credentials.")},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": components},
    }
    if key:
        spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        spec["security"] = [{"bearer": []}]
    spec = _named_refs(spec)
    _keep_used(spec)
    return spec


def _keep_used(spec: dict[str, Any]) -> None:
    """Drop named schemas nothing refers to (the fallbacks of routes not loaded)."""
    schemas = spec["components"]["schemas"]
    used: set[str] = set()
    todo = [r.rsplit("/", 1)[1] for r in _refs(spec["paths"])]
    while todo:
        name = todo.pop()
        if name in used or name not in schemas:
            continue
        used.add(name)
        todo += [r.rsplit("/", 1)[1] for r in _refs(schemas[name])]
    for name in set(schemas) - used:
        del schemas[name]


def fallback_schemas() -> dict[str, dict[str, Any]]:
    """The named schemas as far as they are known without asking the running server."""
    from companion_engine.patterns import MODEL_NAME, ecma

    return {
        **SCHEMAS,
        **ADDED_SCHEMAS,
        **{name: schema for make in LIVE_SCHEMAS for name, schema in make().items()},
        "ModelName": {"type": "string", "pattern": ecma(MODEL_NAME), "maxLength": 200,
                      "description": "A LiteLLM model, `provider/model`."},
        "AudioFormat": audio_format_schema(AUDIO_FORMATS),
        "BackendVoice": backend_voice_schema([]),
    }


async def live_schemas(engine: Engine) -> dict[str, dict[str, Any]]:
    """The named schemas whose valid values depend on this server: the providers LiteLLM
    knows, the audio formats this install encodes, the active TTS backend's voices."""
    from companion_engine.llm import PROVIDER_ALIASES, litellm_providers
    from companion_engine.speech import formats

    providers = await litellm_providers()
    voices: list[str] = []
    async with engine.lease() as pipeline:
        if pipeline.tts.speaks:
            try:
                voices = [str(v["id"]) for v in await pipeline.tts.voices() if v.get("id")]
            except Exception:  # a backend that cannot list its voices: any name, then
                voices = []
    return {
        "ModelName": model_name_schema([*providers, *PROVIDER_ALIASES]),
        "AudioFormat": audio_format_schema(
            f for f in AUDIO_FORMATS if formats.unavailable(f) is None),
        "BackendVoice": backend_voice_schema(voices),
    }
