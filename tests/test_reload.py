"""Hot reload against a real running server and real files in a temp dir.

Every test edits files on disk the way a user would (editors save by writing a
temp file and renaming it) and watches the running server change, or refuse to.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from companion_engine.config import AppConfig
from companion_engine.keys import ENGINE
from tests.reload_helpers import (
    PROBE_PLUGIN,
    probe_profile,
    read_text,
    reload_status,
    save,
    save_yaml,
    wait_error,
    wait_generation,
    wait_until,
)

Start = Callable[..., Awaitable[tuple[TestClient, AppConfig]]]


@pytest.fixture
def start(make_config: Any, make_client: Any) -> Start:
    """A running server over a temp config folder that uses the probe plugin."""

    async def go(label: str = "A", *, reload: bool = True, close_log: Path | None = None,
                 config: dict[str, Any] | None = None,
                 **profile: Any) -> tuple[TestClient, AppConfig]:
        cfg = make_config(profile=probe_profile(label, close_log, **profile),
                          config={"reload": reload, **(config or {})})
        (cfg.path("plugins") / "probe.py").write_text(PROBE_PLUGIN)
        return await make_client(cfg), cfg

    return go


def profile_file(cfg: AppConfig, name: str = "default") -> Path:
    return cfg.path("profiles") / f"{name}.yaml"


def label_of(client: TestClient) -> str:
    return client.server.app[ENGINE].pipeline.output[0].options.label


async def test_profile_edit_applies_without_restart(start: Start) -> None:
    client, cfg = await start("A")
    before = await reload_status(client)
    assert before["generation"] == 1 and before["last_error"] is None

    save_yaml(profile_file(cfg), probe_profile("B", llm={
        "model": "openai/other-model", "api_base": "http://127.0.0.1:9/v1", "temperature": 0.25}))
    status = await wait_generation(client, 2)

    assert status["last_error"] is None and status["last_reload"] is not None
    assert label_of(client) == "B"
    body = await (await client.get("/api/status")).json()
    assert body["active_model"] == "openai/other-model"
    assert body["configuration"]["temperature"] == 0.25


async def test_plain_write_and_save_by_rename_both_count(start: Start) -> None:
    client, cfg = await start("A")
    profile_file(cfg).write_text(yaml.safe_dump(probe_profile("plain")))  # in place
    await wait_generation(client, 2)
    assert label_of(client) == "plain"
    save_yaml(profile_file(cfg), probe_profile("renamed"))  # temp file + rename
    await wait_generation(client, 3)
    assert label_of(client) == "renamed"


async def test_temp_and_unrelated_files_do_not_reload(start: Start) -> None:
    client, cfg = await start("A")
    profiles = cfg.path("profiles")
    (profiles / ".default.yaml.swp").write_text("garbage: [")
    (profiles / "default.yaml~").write_text("garbage: [")
    (profiles / "notes.txt").write_text("hello")
    (cfg.base_dir / "README.md").write_text("hi")
    (cfg.path("data") / "x.yaml").write_text("garbage: [")
    # A real change afterwards proves the watcher was alive and saw only that one.
    await asyncio.sleep(0.3)
    save_yaml(profile_file(cfg), probe_profile("B"))
    status = await wait_generation(client, 2)
    await asyncio.sleep(0.3)
    assert (await reload_status(client))["generation"] == 2
    assert status["last_error"] is None


async def test_yaml_syntax_error_keeps_running_pipeline_then_valid_edit_recovers(
        start: Start) -> None:
    client, cfg = await start("A")
    save(profile_file(cfg), "llm:\n  model: openai/x\nprompt: [\n  - oops: {\n")
    status = await wait_error(client)

    assert status["generation"] == 1
    assert "default.yaml:" in status["last_error"] and "YAML syntax error" in status["last_error"]
    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded"
    assert "config" in [r["component"] for r in health["reasons"]]
    assert label_of(client) == "A"  # still serving the old profile

    save_yaml(profile_file(cfg), probe_profile("B"))
    status = await wait_generation(client, 2)
    assert status["last_error"] is None
    health = await (await client.get("/health")).json()
    assert [r["component"] for r in health["reasons"]] == ["llm"]  # no LLM in this test
    assert label_of(client) == "B"


async def test_schema_error_names_file_line_and_key(start: Start) -> None:
    client, cfg = await start("A")
    data = probe_profile("B")
    data["llm"]["temprature"] = 0.5
    save_yaml(profile_file(cfg), data)
    status = await wait_error(client)
    lines = yaml.safe_dump(data, sort_keys=False).splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "temprature" in text)
    assert f"default.yaml:{line}: llm.temprature: unknown option" in status["last_error"]
    assert status["generation"] == 1 and label_of(client) == "A"


async def test_unknown_stage_is_rejected_with_line(start: Start) -> None:
    client, cfg = await start("A")
    data = probe_profile("B")
    data["output"].append("no_such_stage")
    save_yaml(profile_file(cfg), data)
    status = await wait_error(client)
    assert "output[1]: unknown stage 'no_such_stage'" in status["last_error"]
    assert "default.yaml:" in status["last_error"]
    assert status["generation"] == 1 and label_of(client) == "A"


async def test_bad_stage_options_are_rejected(start: Start) -> None:
    client, cfg = await start("A")
    data = probe_profile("B")
    data["output"] = [{"probe_tag": {"label": "B", "colour": "red"}}]
    save_yaml(profile_file(cfg), data)
    status = await wait_error(client)
    assert "output[0].probe_tag.colour: unknown option" in status["last_error"]
    assert label_of(client) == "A"


async def test_old_pipeline_stages_are_closed_after_swap(start: Start, tmp_path: Path) -> None:
    log = tmp_path / "closed.log"
    client, cfg = await start("A", close_log=log)
    save_yaml(profile_file(cfg), probe_profile("B", close_log=log))
    await wait_generation(client, 2)
    await wait_until(lambda: read_text(log), what="old pipeline closed")
    assert log.read_text().split() == ["A"]


async def test_leased_pipeline_survives_reload_and_closes_after(
        start: Start, tmp_path: Path) -> None:
    """A turn holding the old pipeline keeps it; it closes when the turn lets go."""
    log = tmp_path / "closed.log"
    client, cfg = await start("A", close_log=log)
    engine = client.server.app[ENGINE]
    async with engine.lease() as pipeline:
        save_yaml(profile_file(cfg), probe_profile("B", close_log=log))
        await wait_generation(client, 2)
        assert engine.pipeline.output[0].options.label == "B"
        assert pipeline.output[0].options.label == "A" and not pipeline.closed
        assert not log.exists()
    assert pipeline.closed and log.read_text().split() == ["A"]


# --- companion.yaml ---------------------------------------------------------------------------


async def test_companion_yaml_switches_profile(start: Start) -> None:
    client, cfg = await start("A")
    save_yaml(profile_file(cfg, "other"), probe_profile("other-profile"))
    await asyncio.sleep(0.2)  # a change to a profile that is not in use: no swap needed
    save_yaml(cfg.base_dir / "companion.yaml", {"reload": True, "profile": "other"})
    await wait_until(lambda: _label_is(client, "other-profile"), what="profile switch")
    body = await (await client.get("/api/status")).json()
    assert body["profile"] == "other"


async def _label_is(client: TestClient, label: str) -> bool:
    return label_of(client) == label


async def test_restart_only_settings_are_reported_and_the_rest_applies(start: Start) -> None:
    client, cfg = await start("A")
    engine = client.server.app[ENGINE]
    port, store_url = engine.config.server.port, engine.config.store.url
    origin = {"Origin": "http://example.test"}
    resp = await client.get("/api/status", headers=origin)
    assert "Access-Control-Allow-Origin" not in resp.headers
    save_yaml(cfg.base_dir / "companion.yaml", {
        "reload": True,
        "server": {"port": port + 1, "cors_origins": ["http://example.test"]},
        "store": {"url": "sqlite:///data/elsewhere.db"},
        "rate_limit": {"requests": 7, "window_s": 1},
    })
    status = await wait_generation(client, 2)
    assert status["restart_required"] == ["server.port", "store.url"]
    assert status["last_error"] is None
    # Applied live ...
    assert engine.config.server.cors_origins == ["http://example.test"]
    resp = await client.get("/api/status", headers=origin)
    assert resp.headers["Access-Control-Allow-Origin"] == "http://example.test"
    assert engine.config.rate_limit.requests == 7
    # ... but not the parts a running server cannot change.
    assert engine.config.server.port == port and engine.config.store.url == store_url

    save_yaml(cfg.base_dir / "companion.yaml", {"reload": True})  # back as it was
    status = await wait_generation(client, 3)
    assert status["restart_required"] == []
    assert engine.config.rate_limit.requests == 100


async def test_invalid_companion_yaml_is_rejected(start: Start) -> None:
    client, cfg = await start("A")
    save(cfg.base_dir / "companion.yaml", "reload: true\nserver:\n  prot: 3001\n")
    status = await wait_error(client)
    assert "companion.yaml:3: server.prot: unknown option" in status["last_error"]
    assert status["generation"] == 1
    save(cfg.base_dir / "companion.yaml", "reload: true\n")
    status = await wait_generation(client, 2)
    assert status["last_error"] is None


async def test_unknown_profile_in_companion_yaml_is_rejected(start: Start) -> None:
    client, cfg = await start("A")
    save_yaml(cfg.base_dir / "companion.yaml", {"reload": True, "profile": "nope"})
    status = await wait_error(client)
    assert "profile 'nope' not found; known: default" in status["last_error"]
    assert label_of(client) == "A"


# --- local plugins ----------------------------------------------------------------------------


SHOUT_PLUGIN = '''
from companion_engine import hookimpl
from companion_engine.stages import Sanitizer


class Shout(Sanitizer):
    name = "shout"
    VERSION = {version}

    async def process(self, chunks, turn):
        async for chunk in chunks:
            yield chunk.upper()


@hookimpl
def register_sanitizers():
    return [Shout]
'''


async def test_plugin_file_that_fails_to_import_keeps_pipeline(start: Start) -> None:
    client, cfg = await start("A")
    plugin = cfg.path("plugins") / "shout.py"
    save(plugin, "import os\n\nraise RuntimeError('broken on purpose')\n")
    status = await wait_error(client)
    assert f"{plugin}:3: plugin shout: import: RuntimeError: broken on purpose" in (
        status["last_error"])
    assert status["generation"] == 1 and label_of(client) == "A"

    # A profile change while the plugin is still broken is still rejected: the broken
    # file stays pending until it is fixed.
    save_yaml(profile_file(cfg), probe_profile("B"))
    await asyncio.sleep(0.3)
    status = await reload_status(client)
    assert status["generation"] == 1 and "broken on purpose" in status["last_error"]

    save(plugin, SHOUT_PLUGIN.format(version=1))
    status = await wait_generation(client, 2)
    assert status["last_error"] is None and label_of(client) == "B"


async def test_plugin_syntax_error_names_the_line(start: Start) -> None:
    client, cfg = await start("A")
    plugin = cfg.path("plugins") / "typo.py"
    save(plugin, "x = 1\ndef broken(:\n")
    status = await wait_error(client)
    assert f"{plugin}:2: plugin typo: import: SyntaxError" in status["last_error"]


async def test_new_and_edited_plugin_code_reaches_the_new_pipeline(start: Start) -> None:
    client, cfg = await start("A")
    engine = client.server.app[ENGINE]
    save(cfg.path("plugins") / "shout.py", SHOUT_PLUGIN.format(version=1))
    await wait_generation(client, 2)
    assert "shout" in engine.plugins.stages["sanitizer"]
    listing = await (await client.get("/-/plugins")).json()
    assert "shout" in {p["name"] for p in listing["plugins"]}

    data = probe_profile("B")
    data["output"].append("shout")
    save_yaml(profile_file(cfg), data)
    await wait_generation(client, 3)
    assert type(engine.pipeline.output[1]).VERSION == 1

    save(cfg.path("plugins") / "shout.py", SHOUT_PLUGIN.format(version=2))
    await wait_generation(client, 4)
    assert type(engine.pipeline.output[1]).VERSION == 2


async def test_removing_a_plugin_in_use_is_an_invalid_change(start: Start) -> None:
    client, cfg = await start("A")
    (cfg.path("plugins") / "probe.py").unlink()
    status = await wait_error(client)
    assert "unknown stage 'probe_tag'" in status["last_error"]
    assert label_of(client) == "A"


# --- on demand: POST /-/reload (and the reloader without a watcher) ---------------------------


async def test_no_watcher_when_reload_is_off_but_post_reload_works(start: Start) -> None:
    client, cfg = await start("A", reload=False)
    engine = client.server.app[ENGINE]
    assert engine.reloader is not None and not engine.reloader.watching
    save_yaml(profile_file(cfg), probe_profile("B"))
    await asyncio.sleep(0.4)
    assert (await reload_status(client))["generation"] == 1 and label_of(client) == "A"

    resp = await client.post("/-/reload")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["success"] is True and body["config"]["generation"] == 2
    assert label_of(client) == "B"


async def test_post_reload_with_invalid_file_is_422_and_keeps_running(start: Start) -> None:
    client, cfg = await start("A", reload=False)
    save(profile_file(cfg), "llm: [unclosed\n")
    resp = await client.post("/-/reload")
    body = await resp.json()
    assert resp.status == 422
    assert body["success"] is False and "kept" in body["error"]
    assert "default.yaml:2: YAML syntax error" in body["detail"]["last_error"]
    assert label_of(client) == "A"
    # The app is fine: other requests still work.
    assert (await client.get("/")).status == 200


async def test_concurrent_reloads_run_one_at_a_time(start: Start) -> None:
    client, _ = await start("A", reload=False)
    responses = await asyncio.gather(*[client.post("/-/reload") for _ in range(5)])
    generations = sorted([(await r.json())["config"]["generation"] for r in responses])
    assert generations == [2, 3, 4, 5, 6]


async def test_request_schedules_a_reload(start: Start) -> None:
    """What SIGHUP calls: a non-blocking request, done in the background."""
    client, cfg = await start("A", reload=False)
    engine = client.server.app[ENGINE]
    save_yaml(profile_file(cfg), probe_profile("B"))
    engine.reloader.request("SIGHUP")
    await wait_generation(client, 2)
    assert label_of(client) == "B"


async def test_config_reloaded_hook_is_called(start: Start) -> None:
    client, cfg = await start("A", reload=False)
    marker = cfg.base_dir / "hook.log"
    save(cfg.path("plugins") / "hooked.py", f'''
from pathlib import Path
from companion_engine import hookimpl

@hookimpl
def config_reloaded(engine):
    with Path({str(marker)!r}).open("a") as f:
        f.write(str(engine.pipeline.generation) + "\\n")
''')
    assert (await client.post("/-/reload")).status == 200
    assert (await client.post("/-/reload")).status == 200
    assert marker.read_text().split() == ["2", "3"]


# --- characters -------------------------------------------------------------------------------


async def _character_names(client: TestClient) -> dict[str, str]:
    body = await (await client.get("/api/characters")).json()
    return {c["id"]: c["name"] for c in body["data"]}


async def test_character_files_edited_by_hand_appear_change_and_leave(
        start: Start, cards_dir: Path) -> None:
    client, cfg = await start("A")
    engine = client.server.app[ENGINE]
    card = json.loads((cards_dir / "seraphina.v2.chara.json").read_text(encoding="utf-8"))
    target = cfg.path("characters") / "seraphina.json"

    save(target, json.dumps(card))
    names = await wait_until(lambda: _names_if(client, "seraphina"), what="card to appear")
    assert names["seraphina"] == "Seraphina"
    first = engine.characters.get("seraphina")

    card["data"]["name"] = card["name"] = "Seraphina the Second"
    save(target, json.dumps(card))
    await wait_until(lambda: _name_is(client, "seraphina", "Seraphina the Second"),
                     what="card to change")
    assert engine.characters.get("seraphina") is not first  # a new object: caches rebuild

    target.unlink()
    await wait_until(lambda: _gone(client, "seraphina"), what="card to leave")
    # Character changes never touch the pipeline.
    assert (await reload_status(client))["generation"] == 1


async def _names_if(client: TestClient, cid: str) -> dict[str, str] | None:
    names = await _character_names(client)
    return names if cid in names else None


async def _name_is(client: TestClient, cid: str, name: str) -> bool:
    return (await _character_names(client)).get(cid) == name


async def _gone(client: TestClient, cid: str) -> bool:
    return cid not in await _character_names(client)


async def test_profile_character_change_updates_the_default(start: Start, cards_dir: Path) -> None:
    client, cfg = await start("A")
    engine = client.server.app[ENGINE]
    card = (cards_dir / "seraphina.v2.chara.json").read_text(encoding="utf-8")
    save(cfg.path("characters") / "seraphina.json", card)
    await wait_until(lambda: _names_if(client, "seraphina"), what="card to appear")
    save_yaml(profile_file(cfg), probe_profile("A", character="seraphina"))
    await wait_generation(client, 2)
    assert engine.characters.default_id == "seraphina"
    assert engine.characters.active_id == "seraphina"


async def test_characters_folder_removed_and_recreated_is_watched_again(
        start: Start, cards_dir: Path) -> None:
    client, cfg = await start("A")
    folder = cfg.path("characters")
    folder.rmdir()
    await asyncio.sleep(0.3)
    folder.mkdir()
    await asyncio.sleep(0.3)  # the watcher sets itself up on the new folder
    save(folder / "aqua.json", (cards_dir / "aqua.v1.chara.json").read_text(encoding="utf-8"))
    names = await wait_until(lambda: _names_if(client, "aqua"), what="card in new folder")
    assert names["aqua"] == "Aqua"


async def test_env_file_beside_the_config_is_watched(start: Start,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPANION_PROFILE", raising=False)
    client, cfg = await start("A")
    save_yaml(profile_file(cfg, "other"), probe_profile("from-env"))
    save(cfg.base_dir / ".env", "COMPANION_PROFILE=other\n")
    await wait_until(lambda: _label_is(client, "from-env"), what="profile from .env")


async def test_deleted_companion_yaml_is_an_error_until_it_is_back(start: Start) -> None:
    client, cfg = await start("A")
    config_file = cfg.base_dir / "companion.yaml"
    text = config_file.read_text()
    config_file.unlink()
    status = await wait_error(client)
    assert "companion.yaml: cannot read" in status["last_error"]
    assert label_of(client) == "A"
    save(config_file, text)
    status = await wait_generation(client, 2)
    assert status["last_error"] is None


async def _prompt_text(client: TestClient, cid: str, message: str) -> str:
    resp = await client.post("/api/prompt/preview", json={
        "character_id": cid, "messages": [{"role": "user", "content": message}]})
    body = await resp.json()
    assert resp.status == 200, body
    return "\n".join(m["content"] for m in body["messages"])


async def test_edited_card_gets_its_lorebook_recompiled(start: Start, cards_dir: Path) -> None:
    """The real Seraphina card: an edited lore entry is what the next prompt uses."""
    client, cfg = await start("A", prompt=["system_prompt", {"lorebook": {}},
                                           "character_definition", "history"])
    card = json.loads((cards_dir / "seraphina.v2.chara.json").read_text(encoding="utf-8"))
    target = cfg.path("characters") / "seraphina.json"
    save(target, json.dumps(card))
    await wait_until(lambda: _names_if(client, "seraphina"), what="card to appear")
    before = await _prompt_text(client, "seraphina", "What is the glade?")
    assert "Seraphina smiles" in before and "MOONWELL" not in before

    entry = card["data"]["character_book"]["entries"][2]
    entry["keys"] = ["moonwell"]
    entry["content"] = "The MOONWELL is a silver pool at the heart of the glade."
    save(target, json.dumps(card))

    async def recompiled() -> bool:
        return "MOONWELL" in await _prompt_text(client, "seraphina", "Show me the moonwell.")

    await wait_until(recompiled, what="edited lore entry in the prompt")
    after = await _prompt_text(client, "seraphina", "What is the glade?")
    assert "Seraphina smiles" not in after  # the old key no longer activates anything
