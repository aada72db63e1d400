"""Serving the web app: fingerprinted files, cache headers, compression, its CSP, the
features it adapts to, ``GET /-/events`` and card pictures. (The app itself runs in a real
browser in ``test_web_app.py``.)"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion_engine.cards import png
from companion_engine.keys import ENGINE
from companion_engine.security import APP_CSP
from companion_engine.web.assets import STATIC_DIR, AssetError, build
from tests.web_helpers import png_card

KEY = "assets-test-key-0123456789"


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, "utf-8")
    return folder


PAGE = ('<link rel="stylesheet" href="app/assets/app.css"><!-- modulepreload -->'
        '<script type="module" src="app/assets/main.js"></script>')


# --- fingerprints --------------------------------------------------------------------------


def test_names_carry_content_hashes_that_cover_imports(tmp_path: Path) -> None:
    folder = write(tmp_path / "s", {
        "index.html": PAGE, "app.css": "body{}",
        "main.js": 'import {b} from "./b.js";\nimport("./lazy.js");\n',
        "b.js": 'export const b = 1;\n', "lazy.js": "export {};\n", "c.js": "export {};\n"})
    first = build(folder)
    main = first.assets[first.hashed["main.js"]].body.decode()
    assert f'from "./{first.hashed["b.js"]}"' in main
    assert f'import("./{first.hashed["lazy.js"]}")' in main
    page = first.index.body.decode()
    assert f'href="app/assets/{first.hashed["app.css"]}"' in page
    assert f'src="app/assets/{first.hashed["main.js"]}"' in page
    preloads = re.findall(r'rel="modulepreload" href="app/assets/([^"]+)"', page)
    assert sorted(preloads) == sorted([first.hashed["b.js"], first.hashed["lazy.js"]])
    assert re.fullmatch(r"b\.[0-9a-f]{10}\.js", first.hashed["b.js"])

    (folder / "b.js").write_text("export const b = 2;\n", "utf-8")
    second = build(folder)
    changed = {name for name in first.hashed if first.hashed[name] != second.hashed[name]}
    assert changed == {"b.js", "main.js"}  # the importer too, nothing else
    assert second.index.name != first.index.name


def test_a_missing_import_or_a_cycle_is_an_error(tmp_path: Path) -> None:
    missing = write(tmp_path / "m", {"index.html": PAGE, "app.css": "",
                                     "main.js": 'import "./gone.js";'})
    with pytest.raises(AssetError, match=r"gone\.js"):
        build(missing)
    cycle = write(tmp_path / "c", {"index.html": PAGE, "app.css": "",
                                   "main.js": 'import "./a.js";', "a.js": 'import "./main.js";'})
    with pytest.raises(AssetError, match="cycle"):
        build(cycle)


def test_the_shipped_app_builds_and_stays_small() -> None:
    manifest = build(STATIC_DIR)
    _, packed = manifest.weight
    assert packed < 150 * 1024, f"the app is {packed} bytes gzipped; the budget is 150 KB"
    for asset in manifest.assets.values():
        if asset.source.endswith(".js"):
            for ref in re.findall(r'from "\./([^"]+)"', asset.body.decode()):
                assert ref in manifest.assets, f"{asset.source} imports {ref}"
    text = manifest.index.body.decode()
    assert "<script>" not in text and "style=" not in text  # nothing inline (CSP)


# --- serving --------------------------------------------------------------------------------


async def test_app_page_headers_and_revalidation(make_client: Any) -> None:
    client = await make_client()
    resp = await client.get("/app", headers={"Accept-Encoding": "gzip, br"})
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["Content-Security-Policy"] == APP_CSP
    assert resp.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in resp.headers["Vary"]
    features = re.search(r'name="companion-features" content="([^"]*)"', text)
    assert features is not None and {"events", "avatars"} <= set(features.group(1).split())
    again = await client.get("/app", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""
    plain = await client.get("/app", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and await plain.text() == text
    slash = await client.get("/app/", allow_redirects=False)
    assert slash.status == 301 and slash.headers["Location"] == "../app"


async def test_assets_are_immutable_and_typed(make_client: Any) -> None:
    client = await make_client()
    page = await (await client.get("/app")).text()
    names = re.findall(r'(?:href|src)="app/assets/([^"]+)"', page)
    kinds = {}
    for name in names:
        resp = await client.get(f"/app/assets/{name}", headers={"Accept-Encoding": "gzip"})
        body = await resp.read()
        assert resp.status == 200, name
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        kinds[name.rsplit(".", 1)[-1]] = resp.content_type
        assert body
        again = await client.get(f"/app/assets/{name}",
                                 headers={"If-None-Match": resp.headers["ETag"]})
        assert again.status == 304
    assert kinds == {"svg": "image/svg+xml", "css": "text/css", "js": "text/javascript"}


@pytest.mark.parametrize("name", ["main.js", "app.css", "index.html", "..%2Fserver.py",
                                  "main.0000000000.js", "%2e%2e%2fcli.py", "x" * 300])
async def test_unknown_or_unhashed_asset_names_are_404(make_client: Any, name: str) -> None:
    client = await make_client()
    resp = await client.get(f"/app/assets/{name}")
    body = await resp.json()
    assert resp.status == 404 and body["success"] is False
    assert "reload /app" in body["detail"]


@pytest.mark.parametrize("path", ["/app/assets/%2e%2e", "/app/assets/../../cli.py",
                                  "/app/assets/.", "/app/assets/"])
async def test_dot_segments_never_leave_the_app(make_client: Any, path: str) -> None:
    """The URL is normalised before routing: at most the page itself, never a file."""
    client = await make_client()
    resp = await client.get(path, allow_redirects=False)
    assert resp.status in (200, 301, 404)
    if resp.status == 301:  # /app/ -> the page
        assert resp.headers["Location"] == "../app"
    if resp.status == 200:
        assert resp.url.path == "/app" or resp.content_type == "text/html"
        assert "<!doctype html>" in await resp.text()


def test_asset_names_never_fail_the_server(tmp_path: Path) -> None:
    """Any name at all: an asset or a 404, never an error (hypothesis over the handler)."""
    from aiohttp.test_utils import make_mocked_request

    from companion_engine.errors import ApiError
    from companion_engine.routes.app import ASSETS, app_asset

    loop = asyncio.new_event_loop()
    try:
        manifest = loop.run_until_complete(ASSETS.get(recheck=True))

        @settings(max_examples=150, deadline=None)
        @given(st.text(max_size=300))
        def check(name: str) -> None:
            req = make_mocked_request("GET", "/app/assets/x", match_info={"name": name})
            try:
                resp = loop.run_until_complete(app_asset(req))
            except ApiError as exc:
                assert exc.status == 404 and name not in manifest.assets
            else:
                assert resp.status == 200 and name in manifest.assets

        check()
    finally:
        loop.close()


async def test_the_app_is_open_but_the_api_needs_the_key(make_client: Any,
                                                         make_config: Any) -> None:
    client = await make_client(make_config(config={"server": {"api_key": KEY}}))
    page = await client.get("/app")
    assert page.status == 200
    name = re.search(r'src="app/assets/([^"]+)"', await page.text())
    assert name is not None
    assert (await client.get(f"/app/assets/{name.group(1)}")).status == 200
    assert (await client.get("/api/characters")).status == 401
    assert (await client.get("/-/events")).status == 401


async def test_openapi_documents_the_app_routes(make_client: Any) -> None:
    client = await make_client()
    spec = await (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert "text/html" in paths["/app"]["get"]["responses"]["200"]["content"]
    assert paths["/app"]["get"]["security"] == []
    assert paths["/app/assets/{name}"]["get"]["security"] == []
    events = paths["/-/events"]["get"]
    assert events["x-endless"] is True
    # security follows the running config: without a key no operation claims one
    assert "security" not in spec and events["security"] == []
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert "image/png" in paths["/api/characters/{id}/avatar"]["get"]["responses"]["200"][
        "content"]


# --- GET /-/events ----------------------------------------------------------------------------


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    """The next ``event:``/``data:`` pair (comments and ``retry:`` skipped)."""
    name = ""
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            return name, json.loads(line[6:])


async def test_events_report_every_reload_as_it_happens(make_client: Any, make_config: Any,
                                                        tmp_path: Path) -> None:
    config = make_config()
    client = await make_client(config)
    resp = await client.get("/-/events")
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert (await resp.content.readline()) == b"retry: 1000\n"
    name, first = await next_event(resp)
    assert name == "status"
    assert first["status"] == "healthy" and first["profile"] == "default"
    assert first["config"]["generation"] == 1 and first["config"]["last_error"] is None
    assert [s["name"] for s in first["stages"]["output"]] == ["strip_think", "sanitize_html"]
    assert first["stages"]["tts"] == {"name": "none", "plugin": "companion_engine.builtin.tts"}

    profile = tmp_path / "profiles" / "default.yaml"
    good = profile.read_text()
    profile.write_text(good + "output: [no_such_stage]\n")
    assert (await client.post("/-/reload")).status == 422
    name, broken = await next_event(resp)
    assert broken["status"] == "degraded" and "no_such_stage" in broken["config"]["last_error"]
    assert broken["config"]["generation"] == 1

    profile.write_text(good)
    assert (await client.post("/-/reload")).status == 200
    name, fixed = await next_event(resp)
    assert fixed["status"] == "healthy" and fixed["config"]["generation"] == 2
    assert fixed["config"]["last_error"] is None

    # The server shutting down ends the stream at once (it would hold the shutdown up).
    client.app[ENGINE].closing.set()
    rest = await asyncio.wait_for(resp.read(), 5)
    assert b"event:" not in rest


async def test_events_keep_the_stream_alive(make_client: Any, monkeypatch: Any) -> None:
    from companion_engine.routes import events

    monkeypatch.setattr(events, "KEEPALIVE_S", 0.05)
    client = await make_client()
    resp = await client.get("/-/events")
    await next_event(resp)
    assert await asyncio.wait_for(resp.content.readline(), 5) == b"\n"  # the event's end
    assert await asyncio.wait_for(resp.content.readline(), 5) == b": keep-alive\n"
    resp.close()


# --- card pictures ------------------------------------------------------------------------


async def test_avatar_is_the_png_cards_picture_without_the_card(make_client: Any) -> None:
    client = await make_client()
    image = png.placeholder_png("Nova", size=16)
    card = png_card("Nova", "A pilot.", "Hi.", image)
    form = aiohttp.FormData()
    form.add_field("file", card, filename="nova.png", content_type="image/png")
    assert (await client.post("/api/characters/upload", data=form)).status == 200
    listed = (await (await client.get("/api/characters")).json())["data"]
    assert [c["avatar"] for c in listed] == ["/api/characters/nova/avatar"]
    resp = await client.get("/api/characters/nova/avatar")
    body = await resp.read()
    assert resp.status == 200 and resp.content_type == "image/png"
    assert body == image  # the picture as it was, the card text gone
    assert not [c for c in png.read_chunks(body) if c.type == b"tEXt"]
    assert len(body) < len(card)
    again = await client.get("/api/characters/nova/avatar",
                             headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


async def test_a_json_card_has_no_avatar(make_client: Any) -> None:
    client = await make_client()
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Plain"}}
    assert (await client.post("/api/characters", json=card)).status == 200
    listed = (await (await client.get("/api/characters")).json())["data"]
    assert listed[0]["avatar"] is None
    resp = await client.get(f"/api/characters/{listed[0]['id']}/avatar")
    assert resp.status == 404 and "initials" in (await resp.json())["detail"]
    assert (await client.get("/api/characters/nobody/avatar")).status == 404
    assert (await client.get("/api/characters/..%2Fx/avatar")).status in (400, 404)


def test_gzip_bodies_are_real_gzip() -> None:
    manifest = build(STATIC_DIR)
    for asset in manifest.assets.values():
        if asset.gzipped is not None:
            assert gzip.decompress(asset.gzipped) == asset.body
