"""What stands between the network and the handlers.

A companion server holds private conversations and runs on a laptop or a LAN
box, often with a browser open on another site. So, on every request:

- browser defences: security headers and a CSP on every response; CORS only for
  ``server.cors_origins`` (preflight answered here, never ``*`` with
  credentials); cross-site writes refused (CSRF); without an API key only
  loopback ``Host`` names are served (DNS rebinding);
- access: with ``server.api_key`` set, everything except the open pages needs
  ``Authorization: Bearer <key>``, compared in constant time; repeated wrong
  keys are rate limited like any other abuse;
- abuse: a token bucket per client IP (``rate_limit``) on the routes that cost
  (chat, character create and upload), a cap on concurrent chat streams per
  IP, and a body cap per route (413 before the body is read). Buckets and
  stream slots live in the engine's ``SharedState``: in this process, or in
  Redis so every engine on one store counts a client once.

``install_security(app)`` wires it all; settings are read from the engine's
config on each request so a hot reload applies them.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger

from companion_engine.cli import is_loopback
from companion_engine.cluster import SYNCED_SETTINGS, settings_to_sync
from companion_engine.config import AppConfig
from companion_engine.errors import ApiError
from companion_engine.keys import ENGINE
from companion_engine.ratelimit import retry_after
from companion_engine.shared import RateLimit, SharedState

# --- headers ---------------------------------------------------------------------------------

#: Every response: JSON and audio need nothing from the page, so allow nothing foreign.
API_CSP = ("default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
           "object-src 'none'")
#: ``/docs`` only: Swagger UI sets inline ``style`` attributes and uses ``data:`` icons.
#: Its scripts are files under /docs (no inline script, no eval).
DOCS_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'; object-src 'none'")
#: ``/app`` (the web app) only: its scripts and styles are files of this server (no inline
#: code, no eval); avatars are card images fetched with the API key and shown as ``blob:``
#: URLs; Trusted Types are enforced, so no HTML string can reach the DOM.
APP_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
           "object-src 'none'; require-trusted-types-for 'script'; trusted-types 'none'")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Conversations and cards are private: no shared cache keeps them (static assets
    # set their own Cache-Control, which wins).
    "Cache-Control": "no-store",
}
DOCS_PAGES = frozenset({"/docs"})

# --- CORS ------------------------------------------------------------------------------------

CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-Request-Id, Last-Event-ID"
CORS_EXPOSE = "X-Request-Id, Retry-After"
CORS_MAX_AGE = "600"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# --- access ----------------------------------------------------------------------------------

#: Paths served without the API key (they reveal no secrets).
OPEN_PATHS = frozenset({"/", "/health", "/openapi.json", "/docs", "/docs/init.js", "/app",
                        "/app/"})
OPEN_PREFIXES = ("/docs/assets/", "/app/assets/")

# --- abuse -----------------------------------------------------------------------------------

#: (method, route pattern) pairs that spend a rate-limit token.
RATE_LIMITED = frozenset({
    ("POST", "/api/chat"),
    ("POST", "/api/chat/stream"),
    ("POST", "/api/characters"),
    ("POST", "/api/characters/upload"),
    ("POST", "/api/tts"),  # synthesis is CPU-heavy
    ("POST", "/api/conversations/{id}/regenerate"),
    ("POST", "/api/conversations/{id}/continue"),
    ("POST", "/api/conversations/{id}/reply"),
    ("POST", "/api/transcribe"),  # so is recognition
    ("GET", "/api/ws"),  # opening a session; each of its turns spends one more
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/audio/speech"),
})
STREAM_ROUTES = frozenset({("POST", "/api/chat/stream"), ("GET", "/api/ws"),
                           ("POST", "/api/conversations/{id}/regenerate"),
                           ("POST", "/api/conversations/{id}/continue"),
                           ("POST", "/api/conversations/{id}/reply"),
                           ("POST", "/v1/chat/completions")})
#: Routes that check the API key themselves: a browser cannot put headers on a WebSocket,
#: so ``/api/ws`` also takes it as a subprotocol or in its first message.
SELF_AUTH_ROUTES = frozenset({("GET", "/api/ws")})
#: Routes that take recorded audio and may use the upload cap: ``/api/transcribe`` always,
#: a chat route only for a spoken (multipart) message.
AUDIO_ROUTES = frozenset({("POST", "/api/transcribe")})
SPOKEN_ROUTES = frozenset({("POST", "/api/chat/stream"), ("POST", "/api/chat")})
#: Routes that carry a whole card (JSON or PNG, avatar included): they may use the app's
#: upload cap; every other route gets ``server.max_body_bytes``.
CARD_ROUTES = frozenset({
    ("POST", "/api/characters"),
    ("POST", "/api/characters/upload"),
    ("PUT", "/api/characters/{id}"),
})


#: Bucket scopes in the shared state: use of the costly routes, and wrong API keys
#: (guessing is rate limited separately from use).
RATE_SCOPE = "rate"
AUTH_SCOPE = "auth"


def install_security(app: web.Application) -> None:
    """Add the security middleware and header hook to ``app`` (engine already set)."""
    app.middlewares.append(security_middleware)
    app.on_response_prepare.append(add_headers)


def route_key(request: web.Request) -> tuple[str, str]:
    """``(method, route pattern)``: immune to ``%2F``, trailing-slash or ``..`` tricks."""
    resource = request.match_info.route.resource
    pattern = resource.canonical if resource is not None else ""
    return request.method, pattern


# --- client addresses ------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip("[]")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_ip(request: web.Request, trusted_proxies: Iterable[str]) -> str:
    """The client's address. ``X-Forwarded-For`` counts only when the peer is a trusted proxy;
    then the right-most address that is not itself a trusted proxy is the client."""
    peer = _parse_ip(request.remote or "")
    if peer is None:
        return request.remote or "unknown"
    trusted = _networks(tuple(trusted_proxies))
    if not trusted or not any(peer in net for net in trusted):
        return str(peer)
    hops = [h for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
    for hop in reversed(hops):
        ip = _parse_ip(hop)
        if ip is None:
            break  # a garbled hop: trust nothing to its left
        if not any(ip in net for net in trusted):
            return str(ip)
    return str(peer)


def client_key(ip: str) -> str:
    """The limiter key of an address: IPv6 by /64 (one host owns the whole prefix)."""
    parsed = _parse_ip(ip)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return ip


# --- origins and hosts -----------------------------------------------------------------------


def _origin_allowed(origin: str, config: AppConfig) -> bool:
    allowed = config.server.cors_origins
    return "*" in allowed or origin.lower() in allowed


def _same_origin(origin: str, request: web.Request) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return bool(parts.netloc) and parts.netloc.lower() == (request.host or "").lower()


def cors_headers(origin: str, config: AppConfig) -> dict[str, str]:
    """CORS response headers for an allowed ``origin`` (credentials never with ``*``)."""
    if "*" in config.server.cors_origins and origin.lower() not in config.server.cors_origins:
        return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": CORS_EXPOSE}
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": CORS_EXPOSE}


def _host_is_loopback(host_header: str) -> bool:
    host = urlsplit(f"//{host_header}").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _parse_ip(host)
    return ip is not None and ip.is_loopback


def _preflight(request: web.Request, config: AppConfig) -> web.Response:
    origin = request.headers["Origin"]
    if not _origin_allowed(origin, config):
        raise ApiError(403, f"origin {origin} is not allowed",
                       "add it to server.cors_origins to let that page call this API")
    headers = {
        **cors_headers(origin, config),
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": CORS_HEADERS,
        "Access-Control-Max-Age": CORS_MAX_AGE,
    }
    return web.Response(status=204, headers=headers)


def _check_browser_context(request: web.Request, config: AppConfig) -> None:
    """Refuse cross-site writes (CSRF) and, without a key, foreign Host names (rebinding)."""
    if not config.server.api_key and request.host and not _host_is_loopback(request.host):
        raise ApiError(403, f"host {request.host!r} is not served",
                       "without server.api_key only loopback host names are accepted "
                       "(protection against DNS rebinding)")
    if request.method not in UNSAFE_METHODS and not is_websocket(request):
        return  # a WebSocket has no CORS: any page may open one, so its origin is checked
    origin = request.headers.get("Origin")
    if origin is not None:
        if not (_origin_allowed(origin, config) or _same_origin(origin, request)):
            raise ApiError(403, f"cross-site request from {origin} refused",
                           "add the origin to server.cors_origins to allow it")
    elif request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise ApiError(403, "cross-site request refused")


# --- access ----------------------------------------------------------------------------------


def is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def key_matches(given: str, expected: str) -> bool:
    """Constant-time comparison: the time taken says nothing about the key."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def api_key_required(config: AppConfig) -> bool:
    """Whether requests need the key; 503 when it was removed from a network bind."""
    if config.server.api_key:
        return True
    if not is_loopback(config.server.host):
        # The bind cannot change on reload, the key can: fail closed, never open.
        raise ApiError(503, "server.api_key was removed while the server listens on "
                            f"{config.server.host}; restore it (or restart on 127.0.0.1)")
    return False


async def check_api_key(request: web.Request, given: str | None) -> None:
    """The key check for a key sent another way than ``Authorization`` (a WebSocket's
    subprotocol or first message): same answers, same limiter for wrong keys."""
    engine = request.app[ENGINE]
    client = client_key(client_ip(request, engine.config.server.trusted_proxies))
    await _check_key(request, engine.config, engine.shared, client, given)


async def _check_key(request: web.Request, config: AppConfig, shared: SharedState,
                     client: str, given: str | None) -> None:
    if is_open(request.path) or not api_key_required(config):
        return
    expected = config.server.api_key
    assert expected is not None
    if given is not None and key_matches(given, expected):
        return
    wait = await shared.take(AUTH_SCOPE, client, config.rate_limit.requests,
                             config.rate_limit.window_s)
    if wait:
        await refused(request, AUTH_SCOPE)
        raise ApiError(429, "too many requests with a wrong API key; slow down",
                       headers={"Retry-After": retry_after(wait)})
    logger.warning("rejected {} {} from {}: {} API key", request.method, request.path, client,
                   "wrong" if given else "no")
    raise ApiError(401, "wrong API key" if given else "missing API key",
                   "send the header `Authorization: Bearer <server.api_key>`",
                   headers={"WWW-Authenticate": 'Bearer realm="companion"'})


# --- abuse -----------------------------------------------------------------------------------


async def _rate_limited(request: web.Request, config: AppConfig, client: str,
                        wait: float) -> ApiError:
    await refused(request, RATE_SCOPE)
    logger.info("rate limited {} {} from {}", request.method, request.path, client)
    limit = config.rate_limit
    return ApiError(429, f"rate limit exceeded: {limit.requests} requests per "
                         f"{limit.window_s:g} s; retry in {retry_after(wait)} s",
                    headers={"Retry-After": retry_after(wait)})


async def refused(request: web.Request, reason: str) -> None:
    """Tell observers (``rate_limited`` hook: metrics) about a 429; off the allowed path."""
    engine = request.app[ENGINE]
    await engine.plugins.call("rate_limited", engine=engine, request=request, reason=reason)


def body_cap(request: web.Request, config: AppConfig, route: tuple[str, str]) -> int:
    if route in CARD_ROUTES or route in AUDIO_ROUTES or (
            route in SPOKEN_ROUTES and request.content_type == "multipart/form-data"):
        return max(request.app._client_max_size, config.server.max_body_bytes)
    return config.server.max_body_bytes


def _too_large(cap: int) -> ApiError:
    return ApiError(413, f"request body too large (limit {cap} bytes)")


async def _run_capped(request: web.Request, handler: Handler, cap: int) -> web.StreamResponse:
    """Run ``handler`` with the body limited to ``cap`` bytes (declared or streamed)."""
    if request.content_length is not None:
        if request.content_length > cap:
            raise _too_large(cap)
    elif request.can_read_body and cap != request.client_max_size:
        # Chunked: the size is only known while reading, so reading must stop at the cap.
        request = request.clone(client_max_size=cap)
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(cap) from None


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Preflight, browser context, API key, rate limit, stream cap and body cap, in that order."""
    engine = request.app[ENGINE]
    config, shared = engine.config, engine.shared
    if (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers):
        return _preflight(request, config)
    _check_browser_context(request, config)
    client = client_key(client_ip(request, config.server.trusted_proxies))
    route = route_key(request)
    if route not in SELF_AUTH_ROUTES:
        await _check_key(request, config, shared, client, bearer_token(request))
    cap = body_cap(request, config, route)
    rate: RateLimit | None = None
    if route in RATE_LIMITED:
        rate = (RATE_SCOPE, config.rate_limit.requests, config.rate_limit.window_s)
    limit = config.server.max_streams_per_ip if route in STREAM_ROUTES else None
    if rate is None and limit is None:
        return await _run_capped(request, handler, cap)
    # The token, the stream slot and the settings sync_middleware needs: one round trip.
    admission = await shared.admit(client, rate=rate, streams=limit,
                                   settings=settings_to_sync(engine, request))
    if admission.settings is not None:
        request[SYNCED_SETTINGS] = admission.settings
    if admission.wait:
        raise await _rate_limited(request, config, client, admission.wait)
    if limit is None:
        return await _run_capped(request, handler, cap)
    slot = admission.slot
    if slot is None:
        await refused(request, "streams")
        raise ApiError(429, f"too many open chat streams from this client (limit {limit})",
                       "close a stream before opening another", headers={"Retry-After": "1"})
    try:
        return await _run_capped(request, handler, cap)
    finally:
        await shared.release_stream(slot)


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers (and CORS for allowed origins) on every response, streams included."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy",
                       DOCS_CSP if request.path in DOCS_PAGES else API_CSP)
    for name, value in SECURITY_HEADERS.items():
        headers.setdefault(name, value)
    origin = request.headers.get("Origin")
    if origin is None:
        return
    vary = headers.get("Vary", "")
    if "origin" not in vary.lower():
        headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
    config = request.app[ENGINE].config
    if _origin_allowed(origin, config):
        headers.update(cors_headers(origin, config))
