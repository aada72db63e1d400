"""The character endpoints over real HTTP, a real folder and real SQLite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from companion_engine.cards import png
from companion_engine.cards.formats import parse_card
from companion_engine.config import AppConfig
from tests.cards_helpers import card_files, card_png, chunk_text, contains, snapshot, v2
from tests.conftest import OWN_CARDS, shared_card
from tests.shipped import shipped_copy


@pytest.fixture
def config(make_config: Any) -> AppConfig:
    # No prompt/output stages: these tests need no pipeline, only the app around the store.
    cfg: AppConfig = make_config(profile={"character": "aria", "user_name": "Sam",
                                          "prompt": [], "output": []})
    folder = cfg.path("characters")
    shipped_copy("characters/aria.yaml", folder / "aria.yaml")
    shutil.copy(shared_card("seraphina.v2.chara.json"), folder / "seraphina.json")
    shutil.copy(shared_card("megumin.v1.png"), folder / "megumin.png")
    return cfg


@pytest.fixture
async def client(make_client: Any, config: AppConfig) -> TestClient:
    return await make_client(config)


def folder(config: AppConfig) -> Path:
    return config.path("characters")


def form(data: bytes, field: str = "file", filename: str = "card.png",
         content_type: str = "application/octet-stream") -> aiohttp.FormData:
    f = aiohttp.FormData()
    f.add_field(field, data, filename=filename, content_type=content_type)
    return f


async def ok(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == 200, body
    assert body["success"] is True
    return body  # type: ignore[no-any-return]


async def fails(resp: aiohttp.ClientResponse, status: int, text: str) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    assert body["success"] is False and text in body["error"], body
    return body  # type: ignore[no-any-return]


# --- reading -----------------------------------------------------------------------------------


async def test_list_keeps_original_fields(client: TestClient) -> None:
    body = await ok(await client.get("/api/characters"))
    by_id = {c["id"]: c for c in body["data"]}
    assert set(by_id) == {"aria", "seraphina", "megumin"}
    sera = by_id["seraphina"]
    assert sera["characterId"] == "seraphina" and sera["name"] == "Seraphina"
    assert len(sera["description"]) == 100
    assert sera["sourceFormat"] == "json" and sera["cardFormat"] == "v2"
    assert by_id["megumin"]["sourceFormat"] == "png"
    assert by_id["aria"]["active"] is True and sera["active"] is False
    assert sera["created_at"] and sera["updated_at"]


async def test_hand_placed_cards_are_dated_by_their_file(client: TestClient,
                                                         config: AppConfig) -> None:
    from datetime import datetime

    body = await ok(await client.get("/api/characters"))
    aria = next(c for c in body["data"] if c["id"] == "aria")
    mtime = (folder(config) / "aria.yaml").stat().st_mtime
    assert abs(datetime.fromisoformat(aria["updated_at"]).timestamp() - mtime) < 1
    assert abs(datetime.fromisoformat(aria["created_at"]).timestamp() - mtime) < 1


async def test_get_returns_detail_and_has_no_side_effects(client: TestClient,
                                                          config: AppConfig) -> None:
    body = await ok(await client.get("/api/characters/seraphina"))
    d = body["data"]
    raw = json.loads(shared_card("seraphina.v2.chara.json").read_text(encoding="utf-8"))["data"]
    assert d["characterId"] == "seraphina"
    assert d["firstMessage"] == raw["first_mes"]
    assert d["systemPrompt"] == raw["system_prompt"]
    assert d["postHistoryInstructions"] == raw["post_history_instructions"]
    assert d["personality"] == raw["personality"] and d["tags"] == raw["tags"]
    assert d["creator"] == raw["creator"] and d["lorebookEntries"] == 4
    assert d["validation"] == {"valid": True, "warnings": []}
    assert contains(d["card"]["data"], raw)
    assert d["active"] is False
    listing = await ok(await client.get("/api/characters"))
    assert [c["id"] for c in listing["data"] if c["active"]] == ["aria"]


async def test_unknown_character_is_404(client: TestClient) -> None:
    for method, suffix in [("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/activate"),
                           ("GET", "/export")]:
        resp = await client.request(method, f"/api/characters/nobody{suffix}", json={"x": 1})
        await fails(resp, 404, "Character not found")


# --- path tricks -------------------------------------------------------------------------------

TRICKS = ["..", "%2e%2e", "%2E%2E%2Fetc", "..%2f..%2fetc%2fpasswd", "a%00b", "Seraphina",
          "%EF%BD%93%EF%BD%85%EF%BD%92%EF%BD%81",  # fullwidth "sera"
          "seraphina%0A", "seraphina%20", "-x", "x" * 65, ".hidden", "seraphina.json",
          "%252e%252e"]


@pytest.mark.parametrize("trick", TRICKS)
async def test_path_tricks_are_4xx_and_touch_nothing(client: TestClient, config: AppConfig,
                                                     trick: str) -> None:
    before = snapshot(folder(config))
    base = str(client.make_url("/api/characters/"))
    for method, suffix in [("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/activate"),
                           ("GET", "/export?format=png")]:
        url = URL(base + trick + suffix, encoded=True)
        resp = await client.session.request(method, url, json={"name": "hacked"})
        assert resp.status == 400, (method, trick, resp.status)
        body = await resp.json()
        assert body["success"] is False and body["error"]
    assert snapshot(folder(config)) == before
    listing = await ok(await client.get("/api/characters"))
    assert {c["name"] for c in listing["data"]} == {"Aria", "Seraphina", "Megumin"}


# --- upload ------------------------------------------------------------------------------------


async def test_upload_every_real_card_and_round_trip_through_export(client: TestClient) -> None:
    for path in card_files():
        first = await ok(await client.post("/api/characters/upload",
                                           data=form(path.read_bytes(), filename=path.name)))
        data = first["data"]
        assert data["validation"]["valid"] is True
        assert data["sourceFormat"] == ("png" if path.suffix == ".png" else "json")
        original = (await ok(await client.get(f"/api/characters/{data['characterId']}")))["data"]
        for fmt in ("png", "json"):
            resp = await client.get(f"/api/characters/{data['characterId']}/export",
                                    params={"format": fmt})
            assert resp.status == 200
            exported = await resp.read()
            again = await ok(await client.post(
                "/api/characters/upload", data=form(exported, filename=f"x.{fmt}")))
            copy = (await ok(await client.get(
                f"/api/characters/{again['data']['characterId']}")))["data"]
            assert copy["card"] == original["card"], path.name
            assert copy["characterId"] != original["characterId"]


async def test_upload_legacy_field_and_response_shape(client: TestClient,
                                                      config: AppConfig) -> None:
    raw = shared_card("megumin.v1.png").read_bytes()
    body = await ok(await client.post("/api/characters/upload",
                                      data=form(raw, field="character", filename="m.png")))
    d = body["data"]
    assert set(d) >= {"characterId", "name", "description", "personality", "firstMessage",
                      "systemPrompt", "sourceFormat", "validation"}
    assert d["characterId"] == "megumin-2" and d["sourceFormat"] == "png"
    assert d["validation"]["valid"] is True
    assert (folder(config) / "megumin-2.png").read_bytes() == raw


async def test_upload_json_with_warnings(client: TestClient) -> None:
    card = v2("Warned", first_mes="")
    card["spec_version"] = "2.5"
    body = await ok(await client.post("/api/characters/upload",
                                      data=form(json.dumps(card).encode(), filename="w.json")))
    warnings = body["data"]["validation"]["warnings"]
    assert any(w.startswith("spec_version") for w in warnings)
    assert any(w.startswith("data.first_mes") for w in warnings)


def _bad_uploads() -> list[tuple[str, bytes, int, str]]:
    good = card_png(("chara", chunk_text(v2())))
    return [
        ("truncated png", good[:-30], 400, "truncated PNG"),
        ("png without card", png.placeholder_png("x"), 422, "no character card"),
        ("wrong base64", card_png(("chara", "@@@@")), 400, "not valid base64"),
        ("bad crc", good[:-5] + bytes([good[-5] ^ 1]) + good[-4:], 400, "CRC"),
        ("json not a card", b'{"hello": "world"}', 422, "not a character card"),
        ("json array", b"[1, 2, 3]", 422, "expected a JSON object"),
        ("malformed json", b'{"name": "x"', 400, "not valid JSON"),
        ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF", 415, "JPEG"),
        ("text", b"just some text", 415, "expected a PNG image or a JSON object"),
        ("empty", b"", 400, "empty"),
        ("world info", (OWN_CARDS / "tides.st-worldinfo.json").read_bytes(), 422, "lorebook"),
        ("oversize", b"{" + b" " * (5 * 1024 * 1024) + b"}", 413, "5 MB"),
    ]


@pytest.mark.parametrize(("what", "data", "status", "message"), _bad_uploads(),
                         ids=[b[0] for b in _bad_uploads()])
async def test_bad_uploads_are_4xx_and_store_unchanged(client: TestClient, config: AppConfig,
                                                       what: str, data: bytes, status: int,
                                                       message: str) -> None:
    before = snapshot(folder(config))
    resp = await client.post("/api/characters/upload", data=form(data, filename="../../x.png"))
    await fails(resp, status, message)
    assert snapshot(folder(config)) == before
    assert len((await ok(await client.get("/api/characters")))["data"]) == 3


async def test_upload_needs_multipart_with_a_file(client: TestClient) -> None:
    await fails(await client.post("/api/characters/upload", json=v2()), 415, "multipart")
    f = aiohttp.FormData()
    f.add_field("other", b"{}", filename="x.json")
    await fails(await client.post("/api/characters/upload", data=f), 400, "field `file`")
    bad = await client.post("/api/characters/upload", data=b"--x\r\nnonsense",
                            headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert 400 <= bad.status < 500


# --- create ------------------------------------------------------------------------------------


async def test_create_from_character_data_and_bare_card(client: TestClient,
                                                        config: AppConfig) -> None:
    body = await ok(await client.post("/api/characters", json={
        "character_data": v2("Nova"), "live2d_model_id": "m1", "live2d_model_path": None}))
    d = body["data"]
    assert d["characterId"] == "nova" and d["name"] == "Nova"
    assert d["firstMessage"] == "Hello, I am {{char}}, {{user}}."
    stored = parse_card((folder(config) / "nova.json").read_bytes()).character
    assert stored.extensions["companion_engine"] == {"live2d_model_id": "m1"}
    bare = await ok(await client.post("/api/characters", json=v2("Nova")))
    assert bare["data"]["characterId"] == "nova-2"
    flat = await ok(await client.post("/api/characters", json={"name": "Flat One"}))
    assert flat["data"]["characterId"] == "flat-one"


@pytest.mark.parametrize(("body", "status", "message"), [
    (b'{"character_data": ', 400, "malformed JSON"),
    (b"[1]", 422, "expected a JSON object"),
    (b'{"character_data": 5}', 422, "character_data must be a JSON object"),
    (b'{"character_data": {"name": "x"}, "extra": 1}', 422, "unexpected key"),
    (b'{"character_data": {"spec": "chara_card_v2", "data": {"name": ""}}}', 422,
     "name is empty"),
    (b'{"spec": "chara_card_v2", "data": {"name": "x", "tags": 7}}', 422, "tags"),
    (b'{"name": "x", "live2d_model_id": 5}', 422, "live2d_model_id"),
])
async def test_create_rejects_bad_bodies(client: TestClient, config: AppConfig, body: bytes,
                                         status: int, message: str) -> None:
    before = snapshot(folder(config))
    resp = await client.post("/api/characters", data=body,
                             headers={"Content-Type": "application/json"})
    await fails(resp, status, message)
    assert snapshot(folder(config)) == before


# --- update ------------------------------------------------------------------------------------


async def test_partial_update_and_legacy_live2d_keys(client: TestClient,
                                                     config: AppConfig) -> None:
    before = (await ok(await client.get("/api/characters/seraphina")))["data"]
    body = await ok(await client.put("/api/characters/seraphina", json={
        "description": "Short now.", "live2d_model_id": "hiyori",
        "live2d_model_path": "models/hiyori.model3.json"}))
    d = body["data"]
    assert d["description"] == "Short now." and d["personality"] == before["personality"]
    assert d["live2d_model_id"] == "hiyori"
    assert d["live2d_model_path"] == "models/hiyori.model3.json"
    assert d["extensions"]["world"] == before["extensions"]["world"]
    assert d["card"]["data"]["character_book"] == before["card"]["data"]["character_book"]
    on_disk = parse_card((folder(config) / "seraphina.json").read_bytes()).character
    assert on_disk.description == "Short now."

    body = await ok(await client.put("/api/characters/seraphina", json={
        "character_data": {"tags": ["edited"], "extensions": {"x/y": 1}},
        "live2d_model_id": None}))
    d = body["data"]
    assert d["tags"] == ["edited"] and d["extensions"]["x/y"] == 1
    assert d["extensions"]["world"] == before["extensions"]["world"]
    assert d["live2d_model_id"] is None and d["live2d_model_path"] is not None


async def test_whole_card_update_keeps_png_image(client: TestClient, config: AppConfig) -> None:
    image = [c for c in png.read_chunks(shared_card("megumin.v1.png").read_bytes())
             if c.type == b"IDAT"]
    await ok(await client.put("/api/characters/megumin", json=v2("Megumin 2")))
    data = (folder(config) / "megumin.png").read_bytes()
    assert [c for c in png.read_chunks(data) if c.type == b"IDAT"] == image
    assert parse_card(data).character.name == "Megumin 2"
    got = (await ok(await client.get("/api/characters/megumin")))["data"]
    assert got["name"] == "Megumin 2" and got["cardFormat"] == "v2"


@pytest.mark.parametrize(("body", "status", "message"), [
    ({}, 422, "nothing to update"),
    ({"name": ""}, 422, "name is empty"),
    ({"nmae": "typo"}, 422, "unknown card field"),
    ({"character_book": {"entries": [{"keys": "x", "content": 1}]}}, 422, "character_book"),
    ({"spec": "chara_card_v2", "data": []}, 422, "`data` must be an object"),
    ({"live2d_model_id": ["x"]}, 422, "live2d_model_id"),
])
async def test_bad_updates_change_nothing(client: TestClient, config: AppConfig,
                                          body: dict[str, Any], status: int,
                                          message: str) -> None:
    before = snapshot(folder(config))
    await fails(await client.put("/api/characters/seraphina", json=body), status, message)
    assert snapshot(folder(config)) == before


# --- delete, activate, export --------------------------------------------------------------------


async def test_delete(client: TestClient, config: AppConfig) -> None:
    await ok(await client.post("/api/characters/seraphina/activate"))
    body = await ok(await client.delete("/api/characters/seraphina"))
    assert body == {"success": True, "message": "Character deleted successfully"}
    assert not (folder(config) / "seraphina.json").exists()
    await fails(await client.get("/api/characters/seraphina"), 404, "not found")
    listing = await ok(await client.get("/api/characters"))
    assert [c["id"] for c in listing["data"] if c["active"]] == ["aria"]  # back to default


async def test_activate_persists_across_restarts(make_client: Any, config: AppConfig) -> None:
    first = await make_client(config)
    body = await ok(await first.post("/api/characters/seraphina/activate"))
    assert body["message"] == "Activated character: Seraphina"
    character = body["character"]
    assert character["id"] == "seraphina" and character["name"] == "Seraphina"
    assert "{{" not in character["firstMessage"] and "Seraphina" in character["firstMessage"]
    await first.close()
    second = await make_client(config)
    listing = await ok(await second.get("/api/characters"))
    assert [c["id"] for c in listing["data"] if c["active"]] == ["seraphina"]


async def test_export_formats(client: TestClient) -> None:
    resp = await client.get("/api/characters/aria/export", params={"format": "png"})
    assert resp.status == 200 and resp.content_type == "image/png"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="aria.png"'
    data = await resp.read()
    texts = dict(t for c in png.read_chunks(data) if (t := c.text()))
    assert set(texts) == {"chara", "ccv3"}
    resp = await client.get("/api/characters/aria/export")
    assert resp.status == 200 and resp.content_type == "application/json"
    card = await resp.json()
    assert card["spec"] == "chara_card_v2" and card["data"]["name"] == "Aria"
    assert len(card["data"]["character_book"]["entries"]) == 2
    await fails(await client.get("/api/characters/aria/export", params={"format": "gif"}),
                422, "format")


async def test_openapi_documents_the_character_routes(client: TestClient) -> None:
    spec = await (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, methods in {"/api/characters": {"get", "post"},
                          "/api/characters/upload": {"post"},
                          "/api/characters/{id}": {"get", "put", "delete"},
                          "/api/characters/{id}/activate": {"post"},
                          "/api/characters/{id}/export": {"get"}}.items():
        assert methods <= set(paths[path]), path
    upload = paths["/api/characters/upload"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert "CharacterDetail" in spec["components"]["schemas"]


async def test_multipart_parts_are_capped_and_names_checked(client: TestClient,
                                                            config: AppConfig) -> None:
    before = snapshot(folder(config))
    many = aiohttp.FormData(default_to_multipart=True)
    for i in range(40):
        many.add_field(f"f{i}", "x")
    await fails(await client.post("/api/characters/upload", data=many), 400, "more than 16 parts")
    card = json.dumps(v2()).encode()
    for disposition in ('form-data; name="bad\x01name"', "form-data"):
        raw = (b"--zz\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\nx\r\n"
               b'--zz\r\nContent-Disposition: form-data; name="file"; filename="x.json"\r\n'
               b"\r\n" + card + b"\r\n--zz--\r\n")
        resp = await client.post("/api/characters/upload", data=raw,
                                 headers={"Content-Type": "multipart/form-data; boundary=zz"})
        await fails(resp, 400, "malformed multipart")
    assert snapshot(folder(config)) == before


async def test_unpaired_surrogates_are_rejected_everywhere(client: TestClient,
                                                           config: AppConfig) -> None:
    before = snapshot(folder(config))
    bad = b'{"name": "x\\ud800"}'
    headers = {"Content-Type": "application/json"}
    # Refused by the one JSON decoder (companion_engine.jsoninput) as it parses: a 400.
    await fails(await client.post("/api/characters", data=bad, headers=headers), 400,
                "surrogate")
    await fails(await client.put("/api/characters/seraphina", data=b'{"tags": ["\\udfff"]}',
                                 headers=headers), 400, "surrogate")
    await fails(await client.post("/api/characters/upload", data=form(bad, filename="s.json")),
                400, "surrogate")
    assert snapshot(folder(config)) == before


async def test_absurd_creation_date_does_not_break_listing(client: TestClient) -> None:
    card = {**v2("Old"), "spec": "chara_card_v3", "spec_version": "3.0"}
    card["data"].update(creation_date=2**70, group_only_greetings=[])
    made = await ok(await client.post("/api/characters", json=card))
    got = await ok(await client.get(f"/api/characters/{made['data']['id']}"))
    assert got["data"]["created_at"] == got["data"]["updated_at"]
    await ok(await client.get("/api/characters"))


async def test_odd_keys_next_to_character_data_are_named_safely(client: TestClient) -> None:
    body = b'{"character_data": {"name": "x"}, "\\ud801": 1, "extra": 2}'
    resp = await client.post("/api/characters", data=body,
                             headers={"Content-Type": "application/json"})
    await fails(resp, 400, "unpaired UTF-16 surrogate (\\ud801)")  # named as an escape
    body = b'{"character_data": {"name": "x"}, "\\u00e9\\t": 1, "extra": 2}'
    resp = await client.post("/api/characters", data=body,
                             headers={"Content-Type": "application/json"})
    await fails(resp, 422, "unexpected key(s) next to character_data: 'extra', '\u00e9\\t'")
