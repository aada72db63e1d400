"""``GET /app``: the web app, and its fingerprinted files under ``/app/assets/``.

The page is revalidated on every load (``no-cache`` with an ``ETag``); each file
it loads has its content hash in its name and is cached for a year
(``immutable``). Both go out gzipped when the browser accepts it. The page gets
its own CSP (``security.APP_CSP``): scripts and styles only from files of this
server, no inline code, no ``eval``, and Trusted Types enforced so no HTML
string ever reaches the DOM. Edits to ``companion_engine/web/static/`` are
picked up on the next page load (the files' sizes and times are checked then).
"""

from __future__ import annotations

import asyncio
import hashlib
import html

from aiohttp import web

from companion_engine import hookimpl
from companion_engine.engine import Engine
from companion_engine.errors import ApiError
from companion_engine.openapi import ApiRoutes
from companion_engine.security import APP_CSP
from companion_engine.web.assets import (
    STATIC_DIR,
    Asset,
    Manifest,
    build,
    compressed,
    signature,
)

routes = ApiRoutes()

#: A hashed file never changes: a year, and no revalidation.
IMMUTABLE = "public, max-age=31536000, immutable"
#: The page is small and names the current files: always revalidate (304 when unchanged).
REVALIDATE = "no-cache"
PAGE_CONTENT = {"text/html": {"schema": {"type": "string"}}}
ASSET_CONTENT = {kind: {"schema": {"type": "string"}}
                 for kind in ("text/javascript", "text/css", "image/svg+xml")}


class AssetCache:
    """The current ``Manifest``, rebuilt (in a thread) when the static files changed."""

    def __init__(self) -> None:
        self._manifest: Manifest | None = None

    async def get(self, *, recheck: bool) -> Manifest:
        manifest = self._manifest
        if manifest is not None and not recheck:
            return manifest
        sig = await asyncio.to_thread(signature, STATIC_DIR)
        if manifest is None or sig != manifest.signature:
            manifest = self._manifest = await asyncio.to_thread(build, STATIC_DIR)
        return manifest


ASSETS = AssetCache()

#: Optional routes the page adapts to (hidden buttons, fallbacks), by the name it knows
#: them by; the page reads them from ``<meta name="companion-features">``.
FEATURES: dict[str, tuple[str, str]] = {
    "conversations": ("GET", "/api/conversations"),
    "regenerate": ("POST", "/api/conversations/{id}/regenerate"),
    "continue": ("POST", "/api/conversations/{id}/continue"),
    "events": ("GET", "/-/events"),
    "avatars": ("GET", "/api/characters/{id}/avatar"),
}
FEATURES_META = '<meta name="companion-features" content="">'
_pages: dict[tuple[str, str], Asset] = {}


def features(app: web.Application) -> str:
    """The ``FEATURES`` this server has (routes come from plugins, so it varies)."""
    have = {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.resource is not None}
    return " ".join(name for name, key in FEATURES.items() if key in have)


def page(manifest: Manifest, found: str) -> Asset:
    """``index.html`` naming this server's features (one rendering per combination)."""
    key = (manifest.index.name, found)
    if key not in _pages:
        index = manifest.index
        text = index.body.decode("utf-8").replace(
            FEATURES_META, f'<meta name="companion-features" content="{html.escape(found)}">')
        body = text.encode("utf-8")
        name = index.name + "-" + hashlib.sha256(found.encode()).hexdigest()[:6]
        _pages.clear()  # only the current files matter
        _pages[key] = Asset(name, index.source, body, compressed(body, ".html"),
                            index.content_type)
    return _pages[key]


def accepts_gzip(request: web.Request) -> bool:
    for part in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def send(request: web.Request, asset: Asset, cache_control: str,
         extra: dict[str, str] | None = None) -> web.Response:
    headers = {"Cache-Control": cache_control, "ETag": asset.etag, "Vary": "Accept-Encoding",
               **(extra or {})}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and accepts_gzip(request):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    # Content-Type as a header: the body is already encoded (``content_type=`` would
    # make aiohttp add a charset of its own).
    headers["Content-Type"] = asset.content_type
    return web.Response(body=body, headers=headers)


@routes.get("/app", response_content=PAGE_CONTENT, tags=["app"], errors=(),
            summary="The web app (chat, characters, profile author's panel)")
async def app_page(request: web.Request) -> web.Response:
    manifest = await ASSETS.get(recheck=True)
    return send(request, page(manifest, features(request.app)), REVALIDATE,
                {"Content-Security-Policy": APP_CSP})


@routes.get("/app/assets/{name}", response_content=ASSET_CONTENT, tags=["app"], errors=(404,),
            summary="A file of the web app, by its content-hashed name (cached for a year)")
async def app_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    asset = (await ASSETS.get(recheck=False)).assets.get(name)
    if asset is None:
        raise ApiError(404, f"no such file of the web app: {name[:80]!r}",
                       "file names carry a content hash; reload /app for the current ones")
    return send(request, asset, IMMUTABLE)


async def app_slash(request: web.Request) -> web.Response:
    """``/app/`` -> ``/app`` (relative, so a proxy prefix survives): the page's own links
    are relative to ``/``."""
    raise web.HTTPMovedPermanently("../app")


@hookimpl
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    return [*routes, web.get("/app/", app_slash)]
