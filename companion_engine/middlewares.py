"""Cross-cutting request handling: request ids and the JSON error shape.

Every error leaves as ``{"success": false, "error": ..., "detail": ...}`` with
its status: no HTML error pages, no tracebacks to clients.
"""

from __future__ import annotations

import secrets
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger

from companion_engine.chat.openai import error_object
from companion_engine.errors import ApiError
from companion_engine.logs import request_id
from companion_engine.openapi import json_response
from companion_engine.shared import is_outage


def error_body(status: int, error: str, detail: object = None) -> dict[str, object]:
    return {"success": False, "error": error, "detail": detail if detail is not None else error}


def error_response(
    status: int, error: str, detail: object = None, headers: dict[str, str] | None = None,
    *, openai: bool = False,
) -> web.Response:
    """The error shape: ours, or OpenAI's (``{"error": {message, type, param, code}}``)
    for the ``/v1`` routes, whose clients parse that."""
    body = error_object(status, error, detail) if openai else error_body(status, error, detail)
    return json_response(body, status=status, headers=headers)


def speaks_openai(request: web.Request) -> bool:
    return request.path.startswith("/v1/")


def _http_message(exc: web.HTTPException, request: web.Request) -> str:
    status = exc.status
    if status == 404:
        return f"not found: {request.method} {request.path}"
    if status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"method {request.method} not allowed on {request.path}; allowed: {allowed}"
    if status == 413:
        limit = request.app._client_max_size  # the configured body cap
        return f"request body too large (limit {limit} bytes)"
    text = exc.text or ""
    if text and not text.startswith(f"{status}:"):
        return text
    return HTTPStatus(status).phrase.lower()


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler
                                ) -> web.StreamResponse:
    """Tag the request (and its log lines) with an id, echoed as ``X-Request-Id``."""
    rid = request.headers.get("X-Request-Id", "")
    if not (0 < len(rid) <= 64 and rid.replace("-", "").isalnum()):
        rid = secrets.token_hex(6)
    token = request_id.set(rid)
    try:
        response = await handler(request)
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException as exc:
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        request_id.reset(token)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler
                           ) -> web.StreamResponse:
    """Turn every exception into the JSON error shape."""
    openai = speaks_openai(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.error, exc.detail, exc.headers, openai=openai)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() in ("allow", "retry-after", "www-authenticate", "x-request-id")}
        return error_response(exc.status, _http_message(exc, request), headers=headers,
                              openai=openai)
    except ConnectionResetError:
        raise
    except Exception as exc:
        if is_outage(exc):
            # The shared store is away; it heals by itself, so the client may simply retry.
            logger.warning("{} {}: {}", request.method, request.path, exc)
            return error_response(503, "the store is unavailable; retry shortly", str(exc),
                                  headers={"Retry-After": "1"}, openai=openai)
        rid = request_id.get()
        logger.exception("unhandled error in {} {}", request.method, request.path)
        return error_response(500, "internal server error",
                              f"the error was logged with request id {rid}", openai=openai)
