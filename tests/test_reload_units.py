"""The parts of hot reload that need no server: which file changes matter, what a
reload candidate keeps from the running config, command-line overrides."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from watchfiles import Change

from companion_engine import hookimpl
from companion_engine.config import AppConfig
from companion_engine.configload import load_config
from companion_engine.errors import ConfigError
from companion_engine.plugins import PluginHost
from companion_engine.reload import WatchedPaths, is_temp_name, local_plugin_problems, prepare
from companion_engine.testing.project import write_yaml
from tests.reload_helpers import PROBE_PLUGIN, probe_profile

ROOT = Path("/srv/companion")
WATCHED = WatchedPaths(ROOT / "companion.yaml", ROOT / "profiles", ROOT / "characters",
                       ROOT / "plugins")

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
                min_size=1, max_size=40).filter(lambda n: n not in (".", ".."))


@given(name=names, folder=st.sampled_from([ROOT, *WATCHED.folders, ROOT / "data"]))
def test_classify_never_raises_and_temp_files_never_count(name: str, folder: Path) -> None:
    kind = WATCHED.classify(folder / name)
    assert kind in (None, "config", "profiles", "plugins", "characters")
    if is_temp_name(name) and name != ".env":  # .env beside companion.yaml is config
        assert kind is None


@pytest.mark.parametrize(("path", "kind"), [
    ("companion.yaml", "config"),
    (".env", "config"),
    ("profiles/default.yaml", "profiles"),
    ("profiles/other.yaml", "profiles"),
    ("characters/seraphina.json", "characters"),
    ("characters/megumin.PNG", "characters"),
    ("characters/aria.yaml", "characters"),
    ("plugins/shout.py", "plugins"),
    # not ours: other files, other folders, temp files, editor droppings
    ("other.yaml", None),
    ("data/companion.db", None),
    ("data/x.yaml", None),
    ("profiles/notes.txt", None),
    ("profiles/default.yml", None),
    ("plugins/_private.py", None),
    ("plugins/helper.pyc", None),
    ("characters/card.txt", None),
    ("profiles/.default.yaml.swp", None),
    ("profiles/default.yaml~", None),
    ("profiles/.default.yaml.tmp1234", None),
    ("characters/.seraphina.json.abc.tmp", None),
    ("profiles/4913", None),
    ("plugins/#shout.py#", None),
    ("profiles/default.yaml.bak", None),
])
def test_classify(path: str, kind: str | None) -> None:
    assert WATCHED.classify(ROOT / path) == kind


def test_watched_folders_are_not_repeated() -> None:
    same = WatchedPaths(ROOT / "companion.yaml", ROOT, ROOT / "characters", ROOT / "plugins")
    assert same.folders == (ROOT, ROOT / "characters", ROOT / "plugins")


def test_folder_events_are_additions_and_removals_only() -> None:
    assert WATCHED.is_folder_event(Change.deleted, ROOT / "characters")
    assert WATCHED.is_folder_event(Change.added, ROOT / "profiles")
    assert not WATCHED.is_folder_event(Change.modified, ROOT / "profiles")
    assert not WATCHED.is_folder_event(Change.added, ROOT / "data")


# --- prepare: the candidate built off to the side ---------------------------------------------


@pytest.fixture
def folder(make_config: Any) -> AppConfig:
    cfg = make_config(profile=probe_profile("A"), config={"reload": True})
    (cfg.path("plugins") / "probe.py").write_text(PROBE_PLUGIN)
    return cfg


def host_for(cfg: AppConfig) -> PluginHost:
    return PluginHost.load(cfg.path("plugins"), entry_points=False)


def test_prepare_keeps_restart_only_settings_and_lists_them(folder: AppConfig) -> None:
    write_yaml(folder.base_dir / "companion.yaml", {
        "reload": False, "paths": {"data": "elsewhere"},
        "server": {"host": "127.0.0.2", "cors_origins": ["http://a.test"]},
    })
    candidate = prepare(folder, host_for(folder), {}, reload_plugins=False)
    assert candidate.restart_required == ["server.host", "paths.data", "reload"]
    assert candidate.config.server.host == folder.server.host
    assert candidate.config.paths.data == folder.paths.data
    assert candidate.config.reload is True
    assert candidate.config.server.cors_origins == ["http://a.test"]


def test_prepare_reapplies_command_line_overrides(folder: AppConfig) -> None:
    write_yaml(folder.path("profiles") / "cli.yaml", probe_profile("from-cli"))
    running = folder.model_copy(deep=True)
    running.profile = "cli"  # as `companion serve --profile cli` does
    candidate = prepare(running, host_for(folder), {"profile": "cli"}, reload_plugins=False)
    assert candidate.profile.name == "cli"
    assert candidate.config.profile == "cli"


def test_prepare_compares_against_the_effective_settings(
        folder: AppConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19.11: a port from ``--port`` or ``APP_PORT`` is no restart-only change."""
    assert folder.source is not None
    running = load_config(folder.source)
    running.override("server.port", 4100)  # companion serve --port 4100
    running.override("reload", False)      # --no-reload
    write_yaml(folder.path("profiles") / "default.yaml", probe_profile("edited"))
    candidate = prepare(running, host_for(folder), running.overrides, reload_plugins=False)
    assert candidate.restart_required == []
    assert candidate.config.server.port == 4100 and candidate.config.reload is False
    assert candidate.config.overrides == {"server.port": 4100, "reload": False}

    monkeypatch.setenv("APP_PORT", "4200")
    running = load_config(folder.source)
    assert running.server.port == 4200
    candidate = prepare(running, host_for(folder), {}, reload_plugins=False)
    assert candidate.restart_required == [] and candidate.config.server.port == 4200
    # The file's own port changing still needs a restart, and says so.
    write_yaml(folder.base_dir / "companion.yaml", {"reload": True, "server": {"port": 4300}})
    monkeypatch.delenv("APP_PORT")
    assert prepare(running, host_for(folder), {}, reload_plugins=False).restart_required == [
        "server.port"]


def test_prepare_without_plugin_reload_reuses_the_host(folder: AppConfig) -> None:
    host = host_for(folder)
    assert prepare(folder, host, {}, reload_plugins=False).plugins is host
    fresh = prepare(folder, host, {}, reload_plugins=True).plugins
    assert fresh is not host and "probe_tag" in fresh.stages["sanitizer"]


def test_prepare_rejects_a_failing_local_plugin(folder: AppConfig) -> None:
    (folder.path("plugins") / "bad.py").write_text("x = 1\nraise ValueError('nope')\n")
    with pytest.raises(ConfigError) as err:
        prepare(folder, host_for(folder), {}, reload_plugins=True)
    assert str(err.value) == (
        f"{folder.path('plugins') / 'bad.py'}:2: plugin bad: import: ValueError: nope")


def test_prepare_touches_nothing_running(folder: AppConfig) -> None:
    write_yaml(folder.base_dir / "companion.yaml", {"reload": True, "rate_limit": {"requests": 3}})
    before = folder.model_dump()
    prepare(folder, host_for(folder), {}, reload_plugins=True)
    assert folder.model_dump() == before


def test_only_local_plugin_failures_count(folder: AppConfig) -> None:
    """Installed plugins are not reloaded: their failures are not the change's fault."""

    @hookimpl
    def register_everything() -> list[Any]:  # not a hook: the host refuses the plugin
        return []

    stray = SimpleNamespace(register_everything=register_everything)
    host = PluginHost.load(folder.path("plugins"), entry_points=False,
                           extra=[("installed_thing", stray)])
    assert [e.plugin for e in host.errors] == ["installed_thing"]
    assert local_plugin_problems(host, folder.path("plugins")) == []
    (folder.path("plugins") / "installed_thing.py").write_text("")
    assert len(local_plugin_problems(host, folder.path("plugins"))) == 1
