"""Security over real HTTP: headers, CORS, cross-site and rebinding refusal, API key,
rate limits, body and JSON caps. One test (or more) per rule of docs/security.md."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from typing import Any

import pytest
from aiohttp import ClientResponse

from companion_engine.jsoninput import MAX_JSON_DEPTH
from companion_engine.keys import ENGINE
from companion_engine.routes.system import DOCS_HTML
from companion_engine.security import API_CSP, DOCS_CSP, SECURITY_HEADERS

KEY = "k3y-for-tests-0123456789"
ORIGIN = "http://localhost:5173"
EVIL = "https://evil.example"


def assert_security_headers(resp: ClientResponse, csp: str = API_CSP) -> None:
    assert resp.headers["Content-Security-Policy"] == csp, resp.url
    for name, value in SECURITY_HEADERS.items():
        if name == "Cache-Control" and resp.url.path.startswith("/docs/assets/"):
            assert resp.headers[name].startswith("public"), resp.url  # static: cacheable
            continue
        assert resp.headers[name] == value, (resp.url, name)


async def assert_error(resp: ClientResponse, status: int, text: str) -> dict[str, Any]:
    assert resp.status == status, (resp.status, await resp.text())
    body = await resp.json()
    assert body["success"] is False and text in body["error"], body
    return body


@pytest.fixture
def start(make_client, make_config):  # type: ignore[no-untyped-def]
    """``await start(config={...}, profile={...})``: a running app for that config."""

    async def run(**kwargs: Any) -> Any:
        return await make_client(make_config(**kwargs))

    return run


# --- headers ---------------------------------------------------------------------------------


async def test_security_headers_on_every_kind_of_response(start) -> None:  # type: ignore[no-untyped-def]
    client = await start()
    cases = [
        ("GET", "/", 200), ("GET", "/health", 200), ("GET", "/api/status", 200),
        ("GET", "/openapi.json", 200), ("GET", "/docs/assets/swagger-ui.css", 200),
        ("GET", "/docs/init.js", 200), ("GET", "/no/such/page", 404),
        ("DELETE", "/health", 405), ("POST", "/api/chat", 400),
    ]
    for method, path, status in cases:
        resp = await client.request(method, path)
        assert resp.status == status, (method, path, resp.status)
        assert_security_headers(resp)


async def test_docs_page_alone_gets_the_swagger_csp(start) -> None:  # type: ignore[no-untyped-def]
    client = await start()
    resp = await client.get("/docs")
    assert resp.status == 200
    assert_security_headers(resp, DOCS_CSP)
    # The relaxations are exactly what Swagger UI needs, and nothing that runs code.
    assert "'unsafe-inline'" in DOCS_CSP.split("style-src")[1].split(";")[0]
    assert "unsafe-eval" not in DOCS_CSP
    assert "'unsafe-inline'" not in DOCS_CSP.split("script-src")[1].split(";")[0]
    # ...which holds because the page has no inline script or style element.
    html = await resp.text()
    assert html == DOCS_HTML
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html


NODE = shutil.which("node")
#: Runs the page's init script with a stand-in ``SwaggerUIBundle`` that prints its options.
INIT_PROBE = """
const src = require("fs").readFileSync(0, "utf8");
globalThis.window = globalThis;
globalThis.SwaggerUIBundle = (opts) => { console.log(JSON.stringify(opts)); return {}; };
SwaggerUIBundle.presets = {apis: "apis"};
eval(src);
"""


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's init script")
async def test_api_browser_names_no_outside_host(start) -> None:  # type: ignore[no-untyped-def]
    """Issue 19.13: Swagger UI's default ``validatorUrl`` loads a badge from
    validator.swagger.io; the init script turns it off, and no option names another host."""
    client = await start()
    init = await (await client.get("/docs/init.js")).text()
    proc = await asyncio.create_subprocess_exec(
        NODE or "node", "-e", INIT_PROBE, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(init.encode()), 30)
    assert proc.returncode == 0, stderr.decode()
    options = json.loads(stdout)
    assert "validatorUrl" in options and options["validatorUrl"] is None
    assert options.get("queryConfigEnabled") is not True  # ?url=... cannot load a remote spec
    assert not re.search(r"\b(?:https?:)?//", json.dumps(options)), options


# --- CORS ------------------------------------------------------------------------------------


async def test_cors_allowed_origin_gets_headers_others_none(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"cors_origins": [ORIGIN]}})
    ok = await client.get("/api/status", headers={"Origin": ORIGIN})
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in ok.headers["Vary"]
    assert "X-Request-Id" in ok.headers["Access-Control-Expose-Headers"]
    other = await client.get("/api/status", headers={"Origin": EVIL})
    assert other.status == 200  # a GET is harmless; the browser just may not read it
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "Origin" in other.headers["Vary"]


async def test_cors_preflight_allowed_and_refused(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"cors_origins": [ORIGIN]}})
    pre = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type, authorization"}
    ok = await client.options("/api/chat/stream", headers={"Origin": ORIGIN, **pre})
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    assert "Content-Type" in ok.headers["Access-Control-Allow-Headers"]
    assert int(ok.headers["Access-Control-Max-Age"]) > 0
    assert_security_headers(ok)
    bad = await client.options("/api/chat/stream", headers={"Origin": EVIL, **pre})
    await assert_error(bad, 403, "not allowed")
    assert "Access-Control-Allow-Origin" not in bad.headers


async def test_cors_wildcard_never_with_credentials(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"cors_origins": ["*"]}})
    resp = await client.get("/api/status", headers={"Origin": EVIL})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    pre = await client.options("/api/chat", headers={"Origin": EVIL,
                                                     "Access-Control-Request-Method": "POST"})
    assert pre.status == 204 and pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in pre.headers


async def test_preflight_needs_no_api_key(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"cors_origins": [ORIGIN], "api_key": KEY}})
    resp = await client.options("/api/status", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    assert resp.status == 204


# --- cross-site writes and DNS rebinding -----------------------------------------------------


async def test_cross_site_writes_are_refused(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"cors_origins": [ORIGIN]}})
    card = {"name": "Evil", "description": "x"}
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        resp = await client.post("/api/characters", json=card, headers=headers)
        await assert_error(resp, 403, "cross-site")
        resp = await client.delete("/api/characters/aria", headers=headers)
        await assert_error(resp, 403, "cross-site")
    listing = await (await client.get("/api/characters")).json()
    assert "Evil" not in str(listing)


async def test_same_origin_and_listed_origin_writes_pass(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"cors_origins": [ORIGIN]}})
    same = f"http://{client.server.host}:{client.server.port}"
    for origin in (same, ORIGIN):
        resp = await client.post("/api/chat", data=b"{", headers={"Origin": origin})
        await assert_error(resp, 400, "malformed JSON")  # reached the handler


async def test_foreign_host_name_refused_without_key(start) -> None:  # type: ignore[no-untyped-def]
    client = await start()
    resp = await client.get("/api/status", headers={"Host": "rebind.evil.example:3000"})
    await assert_error(resp, 403, "not served")
    for host in ("localhost:3000", "127.0.0.1", "[::1]:3000", "app.localhost"):
        assert (await client.get("/api/status", headers={"Host": host})).status == 200, host


async def test_any_host_name_served_with_key(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"api_key": KEY}})
    resp = await client.get("/api/status", headers={"Host": "companion.lan:3000",
                                                    "Authorization": f"Bearer {KEY}"})
    assert resp.status == 200


# --- API key ---------------------------------------------------------------------------------


async def test_loopback_without_key_is_open(start) -> None:  # type: ignore[no-untyped-def]
    client = await start()
    assert (await client.get("/api/status")).status == 200
    assert (await client.get("/-/config")).status == 200


async def test_key_required_on_api_and_introspection(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"api_key": KEY}})
    for path in ("/api/status", "/api/characters", "/-/config", "/-/plugins",
                 "/api/no-such-route", "/-/", "/api/../-/config", "/API/status"):
        resp = await client.get(path)
        body = await assert_error(resp, 401, "missing API key")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in body["detail"]
        assert_security_headers(resp)
    wrong = await client.get("/api/status", headers={"Authorization": f"Bearer {KEY}x"})
    await assert_error(wrong, 401, "wrong API key")
    basic = await client.get("/api/status", headers={"Authorization": f"Basic {KEY}"})
    await assert_error(basic, 401, "missing API key")
    ok = await client.get("/api/status", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status == 200
    ok = await client.post("/-/reload", headers={"Authorization": f"bearer {KEY}"})
    assert ok.status != 401


async def test_open_pages_stay_open_and_reveal_no_secret(start) -> None:  # type: ignore[no-untyped-def]
    llm_key = "sk-live-DO-NOT-LEAK"
    client = await start(config={"server": {"api_key": KEY}},
                               profile={"llm": {"model": "openai/x", "api_key": llm_key,
                                                "api_base": "http://127.0.0.1:9/v1"}})
    for path in ("/", "/health", "/openapi.json", "/docs", "/docs/init.js"):
        resp = await client.get(path)
        assert resp.status == 200, path
        text = await resp.text()
        assert KEY not in text and llm_key not in text, path
    spec = await (await client.get("/openapi.json")).json()
    assert spec["security"] == [{"bearer": []}]  # Swagger UI's "Authorize" sends the key...
    assert spec["paths"]["/health"]["get"]["security"] == []  # ...except to open pages
    assert "security" not in spec["paths"]["/api/status"]["get"]
    authed = await client.get("/-/config", headers={"Authorization": f"Bearer {KEY}"})
    text = await authed.text()
    assert authed.status == 200 and KEY not in text and llm_key not in text


async def test_key_guessing_is_rate_limited(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"api_key": KEY},
                                       "rate_limit": {"requests": 3, "window_s": 60}})
    statuses = [(await client.get("/api/status", headers={"Authorization": f"Bearer guess{i}"})
                 ).status for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    resp = await client.get("/api/status", headers={"Authorization": "Bearer guess9"})
    assert int(resp.headers["Retry-After"]) >= 1
    # The right key still works: guessing does not lock the owner out.
    ok = await client.get("/api/status", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status == 200


# --- rate limits -----------------------------------------------------------------------------


async def test_rate_limit_on_costly_routes_with_retry_after(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"rate_limit": {"requests": 3, "window_s": 60}})
    for _ in range(3):
        assert (await client.post("/api/chat", data=b"{")).status == 400
    resp = await client.post("/api/chat", data=b"{")
    body = await assert_error(resp, 429, "rate limit exceeded")
    assert 1 <= int(resp.headers["Retry-After"]) <= 20
    assert "3 requests per 60 s" in body["error"]
    assert_security_headers(resp)
    # One bucket per client across the costly routes...
    await assert_error(await client.post("/api/chat/stream", data=b"{"), 429, "rate limit")
    await assert_error(await client.post("/api/characters", data=b"{"), 429, "rate limit")
    await assert_error(await client.post("/api/tts", data=b"{"), 429, "rate limit")
    # ...and cheap routes are not limited.
    for _ in range(10):
        assert (await client.get("/api/status")).status == 200


async def test_forwarded_for_only_counts_from_trusted_proxies(start) -> None:  # type: ignore[no-untyped-def]
    untrusted = await start(config={"rate_limit": {"requests": 2, "window_s": 60}})
    statuses = [(await untrusted.post("/api/chat", data=b"{",
                                      headers={"X-Forwarded-For": f"198.51.100.{i}"})).status
                for i in range(3)]
    assert statuses == [400, 400, 429]  # a forged header does not buy a fresh bucket


async def test_trusted_proxy_clients_get_their_own_buckets(start, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"rate_limit": {"requests": 2, "window_s": 60},
                                       "server": {"trusted_proxies": ["127.0.0.1", "::1"]}})

    async def post(ip: str) -> int:
        return (await client.post("/api/chat", data=b"{",
                                  headers={"X-Forwarded-For": ip})).status

    assert [await post("198.51.100.1") for _ in range(3)] == [400, 400, 429]
    assert await post("198.51.100.2") == 400
    assert await post("6.6.6.6, 198.51.100.1") == 429  # right-most untrusted hop counts


# --- body size and JSON shape ----------------------------------------------------------------


async def test_body_cap_declared_and_streamed(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"max_body_bytes": 4096}})
    big = b'{"message": "' + b"a" * 8000 + b'"}'
    resp = await client.post("/api/chat", data=big)
    await assert_error(resp, 413, "limit 4096 bytes")

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(8):
            yield b" " * 1024  # no Content-Length: chunked

    resp = await client.post("/api/chat", data=chunks())
    await assert_error(resp, 413, "limit 4096 bytes")
    assert (await client.get("/api/status")).status == 200


async def test_card_routes_may_carry_more_than_the_json_cap(start) -> None:  # type: ignore[no-untyped-def]
    client = await start(config={"server": {"max_body_bytes": 4096}})
    card = {"name": "Big", "description": "d" * 20_000, "first_mes": "Hi"}
    resp = await client.post("/api/characters", json=card)
    assert resp.status in (200, 201), await resp.text()
    huge = b"x" * (6 * 1024 * 1024)
    resp = await client.post("/api/characters", data=huge)
    assert resp.status == 413


@pytest.mark.parametrize("depth, ok", [(MAX_JSON_DEPTH - 2, True), (MAX_JSON_DEPTH + 1, False),
                                       (5000, False)])
async def test_json_depth_cap(start, depth: int, ok: bool) -> None:  # type: ignore[no-untyped-def]
    client = await start()
    nested = '{"message": "hi", "x": ' + "[" * depth + "]" * depth + "}"
    resp = await client.post("/api/prompt/preview", data=nested)
    if ok:
        assert resp.status != 400 or "nested" not in (await resp.json())["error"]
    else:
        await assert_error(resp, 400, "nested")


# --- uploads: multipart and PNG --------------------------------------------------------------


def _multipart(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    boundary = "b0undary7x"
    out = b""
    for name, data, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    import struct
    import zlib

    out = b"\x89PNG\r\n\x1a\n"
    for ctype, data in chunks:
        crc = zlib.crc32(ctype + data) & 0xFFFFFFFF
        out += struct.pack(">I4s", len(data), ctype) + data + struct.pack(">I", crc)
    return out


async def test_multipart_part_count_is_capped(start) -> None:  # type: ignore[no-untyped-def]
    client = await start()
    parts = [(f"f{i}", b"x", None) for i in range(40)]
    body, ctype = _multipart(parts)
    resp = await client.post("/api/characters/upload", data=body,
                             headers={"Content-Type": ctype})
    await assert_error(resp, 400, "more than 16 parts")


async def test_malformed_multipart_is_a_400(start) -> None:  # type: ignore[no-untyped-def]
    client = await start()
    body, ctype = _multipart([("\u00e9\x01", b"x", None), ("file", b"{}", "a.json")])
    resp = await client.post("/api/characters/upload", data=body,
                             headers={"Content-Type": ctype})
    await assert_error(resp, 400, "malformed multipart")
    resp = await client.post("/api/characters/upload", data=b"--x\r\ngarbage",
                             headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert resp.status == 400


async def test_png_chunk_bombs_are_refused(start) -> None:  # type: ignore[no-untyped-def]
    from companion_engine.cards.png import MAX_CHUNKS

    client = await start()
    ihdr = (b"IHDR", b"\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00")
    many = _png([ihdr, *[(b"teXt", b"")] * (MAX_CHUNKS + 1), (b"IEND", b"")])
    assert len(many) < 5 * 1024 * 1024  # under the size cap: the chunk cap must catch it
    body, ctype = _multipart([("file", many, "bomb.png")])
    resp = await client.post("/api/characters/upload", data=body,
                             headers={"Content-Type": ctype})
    await assert_error(resp, 400, f"more than {MAX_CHUNKS} chunks")
    liar = _png([ihdr])[:33] + b"\x7f\xff\xff\xf0tEXt" + b"chara\x00" + b"A" * 100
    body, ctype = _multipart([("file", liar, "liar.png")])
    resp = await client.post("/api/characters/upload", data=body,
                             headers={"Content-Type": ctype})
    await assert_error(resp, 400, "declares")


async def test_upload_over_the_file_cap_is_413(start) -> None:  # type: ignore[no-untyped-def]
    client = await start()
    body, ctype = _multipart([("file", b"\x89PNG" + b"\x00" * (6 * 1024 * 1024), "big.png")])
    resp = await client.post("/api/characters/upload", data=body,
                             headers={"Content-Type": ctype})
    assert resp.status == 413
    assert (await client.get("/api/characters")).status == 200


# --- hot reload never opens the API ----------------------------------------------------------


async def test_security_settings_follow_a_reload_and_a_dropped_key_fails_closed(start) -> None:  # type: ignore[no-untyped-def]
    """Bound to the network with a key, a reload that removes the key must not open the API."""
    import yaml

    client = await start(config={"server": {"host": "0.0.0.0", "api_key": KEY},
                                 "rate_limit": {"requests": 50, "window_s": 60}})
    auth = {"Authorization": f"Bearer {KEY}"}
    assert (await client.get("/api/status", headers=auth)).status == 200
    engine = client.app[ENGINE]
    source = engine.config.source
    data = yaml.safe_load(source.read_text())
    data["server"]["api_key"] = None
    data["rate_limit"]["requests"] = 1
    source.write_text(yaml.safe_dump(data))
    assert (await client.post("/-/reload", headers=auth)).status == 200
    assert engine.config.server.api_key is None  # the reload applied...
    for headers in ({}, auth):
        resp = await client.get("/api/status", headers=headers)
        await assert_error(resp, 503, "api_key was removed")  # ...and the API stays shut
    assert (await client.get("/health")).status == 200
    data["server"]["api_key"] = KEY
    source.write_text(yaml.safe_dump(data))
    await engine.reloader.reload(reason="test")
    assert (await client.get("/api/status", headers=auth)).status == 200
    # The new rate limit applies live too: one costly request, then 429.
    statuses = [(await client.post("/api/chat", data=b"{", headers=auth)).status
                for _ in range(2)]
    assert statuses == [400, 429]
