"""The application: service routes, the JSON error shape, request ids, OpenAPI and /docs."""

from __future__ import annotations

from pathlib import Path

from companion_engine import __version__
from tests.plugin_helpers import write_plugin

BOOM_PLUGIN = """
from aiohttp import web
from companion_engine import hookimpl

async def boom(request):
    raise KeyError("secret internals")

async def echo(request):
    return web.json_response({"size": len(await request.read())})

@hookimpl
def register_routes(engine):
    return [web.get("/x/boom", boom), web.post("/x/echo", echo)]
"""


async def test_root(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client()
    resp = await client.get("/")
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "online" and body["version"] == __version__
    assert body["service"] and body["timestamp"]


async def test_health_reports_llm_tts_and_config(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client()
    body = await (await client.get("/health")).json()
    assert body["status"] == "degraded"  # the test profile's LLM (127.0.0.1:9) never answers
    assert [r["component"] for r in body["reasons"]] == ["llm"]
    assert body["llm"]["error"].startswith("cannot reach http://127.0.0.1:9/v1/models")
    del body["llm"]["error"]
    assert body["llm"] == {"provider": "openai/test-model", "connected": False, "type": "local"}
    assert body["tts"]["engine"] == "none"
    assert body["config"]["generation"] == 1 and body["config"]["last_error"] is None


async def test_api_status_keeps_the_original_shape(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(profile={"llm": {"model": "openai/m", "max_tokens": 77,
                                                "temperature": 0.3}})
    body = await (await client.get("/api/status")).json()
    assert body["status"] == "online"
    assert body["active_model"] == "openai/m" and body["active_provider"] == "openai"
    assert body["configuration"]["max_tokens"] == 77
    assert body["configuration"]["temperature"] == 0.3


async def test_plugins_endpoint_lists_builtins_and_failures(make_client, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config()
    write_plugin(config.path("plugins"), "broken", "raise RuntimeError('bad plugin')\n")
    client = await make_client(config)
    body = await (await client.get("/-/plugins")).json()
    names = {p["name"] for p in body["plugins"]}
    assert "companion_engine.routes.system" in names
    (err,) = body["errors"]
    assert err["plugin"] == "broken" and "bad plugin" in err["error"]
    assert err["source"].endswith("broken.py:1")
    # One broken plugin never stops the server.
    assert (await client.get("/health")).status == 200


async def test_config_endpoint_redacts_secrets(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(
        profile={"llm": {"model": "openai/x", "api_key": "sk-live-123"}},
        config={"store": {"url": "sqlite:///data/c.db"}, "plugins": {"p": {"token": "abc"}}},
    )
    resp = await client.get("/-/config")
    text = await resp.text()
    assert resp.status == 200
    assert "sk-live-123" not in text and '"abc"' not in text
    body = await resp.json()
    assert body["profile"]["llm"]["api_key"] == "***"
    assert body["config"]["plugins"]["p"]["token"] == "***"


async def test_error_shape_404(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client()
    resp = await client.get("/no/such/page")
    assert resp.status == 404
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body == {"success": False, "error": "not found: GET /no/such/page",
                    "detail": "not found: GET /no/such/page"}


async def test_error_shape_405(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client()
    resp = await client.delete("/health")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    body = await resp.json()
    assert body["success"] is False and "not allowed" in body["error"]


async def test_error_shape_413(make_client, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config()
    write_plugin(config.path("plugins"), "boom", BOOM_PLUGIN)
    client = await make_client(config)
    resp = await client.post("/x/echo", data=b"x" * (7 * 1024 * 1024))
    assert resp.status == 413
    body = await resp.json()
    assert body["success"] is False and "too large" in body["error"]
    ok = await client.post("/x/echo", data=b"x" * 1000)
    assert (await ok.json()) == {"size": 1000}


async def test_error_shape_500_hides_internals(make_client, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config()
    write_plugin(config.path("plugins"), "boom", BOOM_PLUGIN)
    client = await make_client(config)
    resp = await client.get("/x/boom")
    assert resp.status == 500
    body = await resp.json()
    assert body["success"] is False and body["error"] == "internal server error"
    assert "secret internals" not in await resp.text()
    assert "Traceback" not in await resp.text()
    assert resp.headers["X-Request-Id"] in body["detail"]


async def test_request_id_is_echoed_or_made(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client()
    resp = await client.get("/", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    for bad in ("bad id with spaces", "x" * 65, "<script>"):
        resp = await client.get("/", headers={"X-Request-Id": bad})
        assert resp.headers["X-Request-Id"] != bad
        assert len(resp.headers["X-Request-Id"]) == 12


async def test_openapi_describes_routes_from_their_models(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client()
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert "/health" in spec["paths"] and "/api/status" in spec["paths"]
    health = spec["paths"]["/health"]["get"]
    ref = health["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"status", "version", "llm", "tts", "config"} <= set(schema["properties"])
    assert "ErrorBody" in spec["components"]["schemas"]


async def test_docs_are_served_offline(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client()
    html = await (await client.get("/docs")).text()
    assert "http://" not in html and "https://" not in html  # no CDN
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css",
                  "/docs/init.js"):
        assert asset in html
        resp = await client.get(asset)
        assert resp.status == 200 and len(await resp.read()) > 10
    assert (await client.get("/docs/assets/..%2F..%2Fetc%2Fpasswd")).status == 404
    assert (await client.get("/docs/assets/index.html")).status == 404


def test_app_factory_rejects_a_bad_profile(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from companion_engine.app import create_app
    from companion_engine.errors import ConfigError

    config = make_config(profile={"output": ["no_such_sanitizer"]})
    with pytest.raises(ConfigError, match="unknown stage 'no_such_sanitizer'"):
        create_app(config)


async def test_health_sees_a_reachable_provider(make_client) -> None:  # type: ignore[no-untyped-def]
    from companion_engine.testing import LLMTestServer

    server = await LLMTestServer.start()
    try:
        for model, base in (("openai/test", server.openai_base),
                            ("ollama_chat/llama3.2", server.ollama_base)):
            client = await make_client(profile={"llm": {"model": model, "api_base": base}})
            body = await (await client.get("/health")).json()
            assert body["llm"] == {"provider": model, "connected": True, "type": "local",
                                   "error": None}
            assert body["status"] == "healthy" and body["reasons"] == []
            await client.close()
    finally:
        await server.close()
