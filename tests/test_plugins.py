"""The plugin host: discovery, isolation of broken plugins, env controls, every hook."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from aiohttp import web

from companion_engine import hookimpl
from companion_engine.config import Profile
from companion_engine.errors import ConfigError
from companion_engine.pipeline import build_pipeline
from companion_engine.plugins import PluginError, PluginHost
from companion_engine.stages import STAGE_KINDS
from companion_engine.turn import Turn
from tests.plugin_helpers import STAGES_PLUGIN, T_LISTEN, install_distribution, write_plugin

NO_BUILTINS: tuple[str, ...] = ()


def load(plugins_dir: Path | None = None, **kw: object) -> PluginHost:
    return PluginHost.load(plugins_dir, builtins=NO_BUILTINS, **kw)  # type: ignore[arg-type]


def stage_names(host: PluginHost, kind: str) -> set[str]:
    return set(host.stages[kind])


@pytest.fixture(autouse=True)
def _forget_local_modules() -> None:
    yield
    for name in [m for m in sys.modules if m.startswith("companion_local_plugins.")]:
        del sys.modules[name]


def test_builtin_plugins_all_load() -> None:
    host = PluginHost.load(None, entry_points=False)
    assert host.errors == []
    assert all(info.builtin for info in host.infos.values())


def test_distribution_discovered_through_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_distribution(tmp_path / "site", monkeypatch, dist="companion-demo", version="1.2.3",
                         module="companion_demo_ep", source=STAGES_PLUGIN)
    host = load()
    assert host.errors == []
    info = host.infos["companion_demo_ep"]
    assert (info.distribution, info.version, info.builtin) == ("companion-demo", "1.2.3", False)
    assert "t_whole" in stage_names(host, "sentence_splitter")
    listing = host.listing()["plugins"]
    (entry,) = [p for p in listing if p["name"] == "companion_demo_ep"]
    assert entry["version"] == "1.2.3"
    assert entry["stages"]["tts_backend"] == ["t_silent"]
    assert "register_tts_backends" in entry["hooks"]


def test_load_plugins_env_selects_distributions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_distribution(tmp_path / "site", monkeypatch, dist="companion-demo2", version="0.1",
                         module="companion_demo_sel", source=STAGES_PLUGIN)
    monkeypatch.setenv("COMPANION_LOAD_PLUGINS", "")
    assert "companion_demo_sel" not in load().infos
    monkeypatch.setenv("COMPANION_LOAD_PLUGINS", "companion-demo2")
    assert "companion_demo_sel" in load().infos


def test_disabled_plugins_env_skips_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_distribution(tmp_path / "site", monkeypatch, dist="companion-demo3", version="0.1",
                         module="companion_demo_dis", source=STAGES_PLUGIN)
    write_plugin(tmp_path / "plugins", "localone", STAGES_PLUGIN.replace("t_", "l_"))
    monkeypatch.setenv("COMPANION_DISABLED_PLUGINS", "companion-demo3, localone")
    host = load(tmp_path / "plugins")
    assert "companion_demo_dis" not in host.infos
    assert "localone" not in host.infos


def test_broken_distribution_is_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path / "a", monkeypatch, dist="companion-broken", version="0.1",
                         module="companion_broken_ep", source="raise RuntimeError('boom')\n")
    install_distribution(tmp_path / "b", monkeypatch, dist="companion-fine", version="0.2",
                         module="companion_fine_ep", source=STAGES_PLUGIN)
    host = load()
    assert "companion_fine_ep" in host.infos
    (err,) = host.errors
    assert err.plugin == "companion_broken_ep" and err.stage == "import"
    assert "RuntimeError: boom" in err.error


def test_local_plugin_files_load(tmp_path: Path) -> None:
    write_plugin(tmp_path, "mystages", STAGES_PLUGIN)
    host = load(tmp_path)
    assert host.errors == []
    assert host.infos["mystages"].source == str(tmp_path / "mystages.py")
    assert "t_greeter" in stage_names(host, "prompt_builder")


def test_local_plugin_import_error_is_isolated_with_line(tmp_path: Path) -> None:
    write_plugin(tmp_path, "abroken", "x = 1\nimport not_a_module_anywhere\n")
    write_plugin(tmp_path, "bsyntax", "def f(:\n")
    write_plugin(tmp_path, "good", STAGES_PLUGIN)
    host = load(tmp_path)
    assert "good" in host.infos
    by_plugin = {e.plugin: e for e in host.errors}
    assert by_plugin["abroken"].source == f"{tmp_path / 'abroken.py'}:2"
    assert "ModuleNotFoundError" in by_plugin["abroken"].error
    assert by_plugin["bsyntax"].source == f"{tmp_path / 'bsyntax.py'}:1"


def test_misspelt_hook_is_an_error(tmp_path: Path) -> None:
    write_plugin(tmp_path, "typo", """
        from companion_engine import hookimpl

        @hookimpl
        def register_tts_backend():
            return []
    """)
    host = load(tmp_path)
    assert "typo" not in host.infos
    (err,) = host.errors
    assert "unknown hook(s) register_tts_backend" in err.error
    assert "register_tts_backends" in err.error  # the known hooks are listed


def test_exception_in_registration_hook_is_isolated(tmp_path: Path) -> None:
    write_plugin(tmp_path, "raiser", """
        from companion_engine import hookimpl

        @hookimpl
        def register_sanitizers():
            raise ValueError("nope")
    """)
    write_plugin(tmp_path, "good", STAGES_PLUGIN)
    host = load(tmp_path)
    assert "t_upper" in stage_names(host, "sanitizer")
    (err,) = host.errors
    assert (err.plugin, err.stage) == ("raiser", "register")
    assert "ValueError: nope" in err.error


def test_invalid_stage_class_is_rejected(tmp_path: Path) -> None:
    write_plugin(tmp_path, "badclass", """
        from companion_engine import hookimpl
        from companion_engine.stages import Sanitizer

        class NoName(Sanitizer):
            name = "has space"

        @hookimpl
        def register_sanitizers():
            return [NoName, object]
    """)
    host = load(tmp_path)
    errors = [e.error for e in host.errors]
    assert any("must be an identifier" in e for e in errors)
    assert any("not a subclass of Sanitizer" in e for e in errors)
    assert host.stages["sanitizer"] == {}


def test_duplicate_stage_name_names_both_plugins(tmp_path: Path) -> None:
    write_plugin(tmp_path, "first", STAGES_PLUGIN)
    write_plugin(tmp_path, "second", STAGES_PLUGIN)
    host = load(tmp_path)
    dups = [e for e in host.errors if e.stage == "duplicate"]
    assert len(dups) == len(STAGE_KINDS)  # one per stage kind
    assert all("first" in e.error and "second" in e.error for e in dups)
    assert host.stages["tts_backend"]["t_silent"].plugin == "first"


def test_strict_mode_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, "broken", "raise ImportError('x')\n")
    monkeypatch.setenv("COMPANION_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken"):
        load(tmp_path)


# --- pipeline assembly ------------------------------------------------------------------------


def test_pipeline_resolves_stage_lists_with_validated_options(tmp_path: Path) -> None:
    write_plugin(tmp_path, "mystages", STAGES_PLUGIN)
    host = load(tmp_path)
    profile = Profile.model_validate({
        "prompt": [{"t_greeter": {"text": "hi"}}, "t_lore"],
        "output": ["t_upper"],
        "speech": {"splitter": "t_whole", "cleaners": ["t_upper"], "tts": "t_silent",
                   **T_LISTEN},
    })
    pipeline = build_pipeline(profile, host)
    assert [s.name for s in pipeline.prompt] == ["t_greeter", "t_lore"]
    assert pipeline.prompt[0].options.text == "hi"
    assert pipeline.tts.name == "t_silent" and pipeline.splitter.name == "t_whole"


def test_pipeline_errors_list_known_names_and_bad_options(tmp_path: Path) -> None:
    write_plugin(tmp_path, "mystages", STAGES_PLUGIN)
    host = load(tmp_path)
    profile = Profile.model_validate({
        "prompt": [{"t_greeter": {"txt": "hi"}}, "t_greter"],
        "output": [],
        "speech": {"splitter": "t_whole", "cleaners": [], "tts": {"t_silent": {"voice": 3}},
                   **T_LISTEN},
    })
    with pytest.raises(ConfigError) as err:
        build_pipeline(profile, host)
    text = str(err.value)
    assert "prompt[0].t_greeter.txt: unknown option (options of t_greeter: text)" in text
    assert ("prompt[1]: unknown stage 't_greter' (did you mean 't_greeter'?); "
            "known: t_greeter, t_lore") in text
    assert "speech.tts.t_silent.voice: unknown option" in text


# --- one test per hook (named test_hook_<name>) -----------------------------------------------


async def _run_pipeline_stages(tmp_path: Path) -> Turn:
    write_plugin(tmp_path, "mystages", STAGES_PLUGIN)
    host = load(tmp_path)
    profile = Profile.model_validate({
        "prompt": ["t_lore", "t_greeter"], "output": ["t_upper"],
        "speech": {"splitter": "t_whole", "cleaners": [], "tts": "t_silent", **T_LISTEN},
    })
    pipeline = build_pipeline(profile, host)
    turn = Turn(profile=profile, user_message="hi")
    for stage in pipeline.prompt:
        if hasattr(stage, "inject"):
            await stage.inject(turn)
        else:
            await stage.build(turn)

    async def chunks():
        for c in ["ab", "c"]:
            yield c

    out = [c async for c in pipeline.output[0].process(chunks(), turn)]
    turn.stash["out"] = out
    turn.stash["sentences"] = [s async for s in pipeline.splitter.split(chunks(), turn)]
    turn.stash["audio"] = await pipeline.tts.synthesize("x", turn)
    return turn


async def test_hook_register_prompt_builders(tmp_path: Path) -> None:
    turn = await _run_pipeline_stages(tmp_path)
    assert turn.messages == [{"role": "system", "content": "hello"}]


async def test_hook_register_lorebook_injectors(tmp_path: Path) -> None:
    turn = await _run_pipeline_stages(tmp_path)
    assert turn.slots == {"before_char": ["lore"]}


async def test_hook_register_sanitizers(tmp_path: Path) -> None:
    turn = await _run_pipeline_stages(tmp_path)
    assert turn.stash["out"] == ["AB", "C"]


async def test_hook_register_sentence_splitters(tmp_path: Path) -> None:
    turn = await _run_pipeline_stages(tmp_path)
    assert turn.stash["sentences"] == ["abc"]


async def test_hook_register_tts_backends(tmp_path: Path) -> None:
    turn = await _run_pipeline_stages(tmp_path)
    assert turn.stash["audio"].sample_rate == 16000


ROUTES_PLUGIN = """
from aiohttp import web
from companion_engine import hookimpl

async def hello(request):
    return web.json_response({"hello": "plugin"})

async def boom(request):
    raise RuntimeError("kaboom")

@hookimpl
def register_routes(engine):
    return [web.get("/x/hello", hello), web.get("/x/boom", boom)]
"""


async def test_hook_register_routes(make_client, make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = make_config()
    write_plugin(config.path("plugins"), "routes_plugin", ROUTES_PLUGIN)
    write_plugin(config.path("plugins"), "broken_routes", """
        from companion_engine import hookimpl

        @hookimpl
        def register_routes(engine):
            raise RuntimeError("cannot")
    """)
    client = await make_client(config)
    resp = await client.get("/x/hello")
    assert resp.status == 200 and await resp.json() == {"hello": "plugin"}
    # A route that raises gives the JSON 500 shape, and the server keeps serving.
    resp = await client.get("/x/boom")
    assert resp.status == 500
    body = await resp.json()
    assert body["success"] is False and "kaboom" not in str(body)
    assert (await client.get("/health")).status == 200
    listing = await (await client.get("/-/plugins")).json()
    assert any(e["plugin"] == "broken_routes" and "cannot" in e["error"]
               for e in listing["errors"])


LIFECYCLE_PLUGIN = """
from companion_engine import hookimpl

EVENTS = []

@hookimpl
async def startup(engine):
    EVENTS.append(("startup", engine.profile.name))

@hookimpl
def shutdown(engine):
    EVENTS.append(("shutdown", engine.profile.name))
"""

FAILING_LIFECYCLE = """
from companion_engine import hookimpl

@hookimpl
async def startup(engine):
    raise RuntimeError("startup failed")

@hookimpl
def shutdown(engine):
    raise RuntimeError("shutdown failed")
"""


async def _lifecycle(make_config) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    from aiohttp.test_utils import TestClient, TestServer

    from companion_engine.app import create_app

    config = make_config()
    write_plugin(config.path("plugins"), "lifecycle", LIFECYCLE_PLUGIN)
    write_plugin(config.path("plugins"), "afailing", FAILING_LIFECYCLE)
    app = create_app(config)
    events = sys.modules["companion_local_plugins.lifecycle"].EVENTS
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/")).status == 200
        assert events == [("startup", "default")]
    return events


async def test_hook_startup(make_config) -> None:  # type: ignore[no-untyped-def]
    events = await _lifecycle(make_config)
    assert events[0] == ("startup", "default")


async def test_hook_shutdown(make_config) -> None:  # type: ignore[no-untyped-def]
    events = await _lifecycle(make_config)
    assert events[-1] == ("shutdown", "default")


def test_hookimpl_with_unknown_argument_is_rejected(tmp_path: Path) -> None:
    write_plugin(tmp_path, "badargs", """
        from companion_engine import hookimpl

        @hookimpl
        def startup(engine, app):
            pass
    """)
    host = load(tmp_path)
    assert "badargs" not in host.infos
    assert "app" in host.errors[0].error


async def _ok(request: web.Request) -> web.Response:
    return web.Response()


async def test_route_defs_must_be_collected_before_start() -> None:
    """register_routes results go into the router before it freezes."""
    app = web.Application()
    app.router.add_get("/", _ok)
    app.freeze()
    with pytest.raises(RuntimeError):
        app.router.add_get("/late", _ok)


def test_hookimpl_is_exported() -> None:
    import companion_engine

    assert companion_engine.hookimpl is hookimpl


RELOAD_PLUGIN = """
from companion_engine import hookimpl

SEEN = []

@hookimpl
async def config_reloaded(engine):
    SEEN.append((engine.reload_status.generation, engine.profile.user_name))
"""


async def test_hook_config_reloaded(make_client, make_config) -> None:  # type: ignore[no-untyped-def]
    import yaml

    config = make_config()
    write_plugin(config.path("plugins"), "watcher", RELOAD_PLUGIN)
    client = await make_client(config)
    profile_file = config.path("profiles") / "default.yaml"
    data = yaml.safe_load(profile_file.read_text())
    data["user_name"] = "Reloaded"
    profile_file.write_text(yaml.safe_dump(data))
    resp = await client.post("/-/reload")
    assert resp.status == 200, await resp.text()
    # The plugin file was re-executed by the reload; the fresh module holds the record.
    seen = sys.modules["companion_local_plugins.watcher"].SEEN
    assert seen and seen[-1][1] == "Reloaded"
    assert seen[-1][0] >= 2


TURN_PLUGIN = """
from companion_engine import hookimpl

TURNS = []

@hookimpl
async def turn_completed(engine, turn):
    result = turn.result
    TURNS.append((turn.user_message, result.status, result.content))

@hookimpl
def startup(engine):
    pass
"""

FAILING_TURN_PLUGIN = """
from companion_engine import hookimpl

@hookimpl
def turn_completed(engine, turn):
    raise RuntimeError("observer broke")
"""


async def test_hook_turn_completed(make_client, make_config) -> None:  # type: ignore[no-untyped-def]
    from companion_engine.testing import LLMTestServer, Script

    server = await LLMTestServer.start()
    try:
        config = make_config(profile={"llm": {"model": "openai/test",
                                              "api_base": server.openai_base}})
        write_plugin(config.path("plugins"), "observer", TURN_PLUGIN)
        write_plugin(config.path("plugins"), "aobserver", FAILING_TURN_PLUGIN)
        client = await make_client(config)
        server.push(Script(tokens=["Hi", " there", "."]))
        resp = await client.post("/api/chat", json={"message": "hello"})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["content"] == "Hi there."
        turns = sys.modules["companion_local_plugins.observer"].TURNS
        assert turns == [("hello", "complete", "Hi there.")]
        listing = await (await client.get("/-/plugins")).json()
        assert any(e["plugin"] == "aobserver" and "observer broke" in e["error"]
                   for e in listing["errors"])
    finally:
        await server.close()


def test_plain_pydantic_options_and_a_single_class_are_accepted(tmp_path: Path) -> None:
    """design.md asks for "a nested pydantic Options model": any BaseModel will do."""
    write_plugin(tmp_path, "plainopts", """
        from pydantic import BaseModel, ConfigDict
        from companion_engine import hookimpl
        from companion_engine.stages import Sanitizer

        class Plain(Sanitizer):
            name = "plain_opts"

            class Options(BaseModel):
                model_config = ConfigDict(extra="forbid")
                level: int = 1

            async def process(self, chunks, turn):
                async for c in chunks:
                    yield c

        @hookimpl
        def register_sanitizers():
            return Plain
    """)
    host = load(tmp_path)
    assert host.errors == []
    profile = Profile.model_validate({
        "output": [{"plain_opts": {"level": 3}}],
        "speech": {"splitter": "t_whole", "cleaners": [], "tts": "t_silent", **T_LISTEN},
        "prompt": [],
    })
    write_plugin(tmp_path, "mystages", STAGES_PLUGIN)
    pipeline = build_pipeline(profile, load(tmp_path))
    assert pipeline.output[0].options.level == 3
    bad = profile.model_copy(update={"output": Profile.model_validate(
        {"output": [{"plain_opts": {"levle": 3}}]}).output})
    with pytest.raises(ConfigError, match="levle: unknown option"):
        build_pipeline(bad, load(tmp_path))


SETTINGS_PLUGIN = """
from companion_engine import hookimpl

SEEN = {}

@hookimpl
def startup(engine):
    SEEN["mine"] = engine.plugin_config("companion-settings-demo")
    SEEN["absent"] = engine.plugin_config("nobody")
"""


async def test_plugin_config_reads_companion_yaml_plugins_section(make_client, make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(config={"plugins": {"companion-settings-demo": {"voice": "af_sky"}}})
    write_plugin(config.path("plugins"), "settings", SETTINGS_PLUGIN)
    await make_client(config)
    seen = sys.modules["companion_local_plugins.settings"].SEEN
    assert seen == {"mine": {"voice": "af_sky"}, "absent": {}}
