"""The plugin host under hostile and changing plugins: probing, wrappers, tracing, reloads."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from companion_engine.plugin_probe import probe_plugin_file
from companion_engine.plugins import PluginHost
from tests.conftest import MakeClient
from tests.plugin_helpers import write_plugin

NO_BUILTINS: tuple[str, ...] = ()

EXITS = """
import os
os._exit(3)
"""

HANGS = """
import time
time.sleep(60)
"""

FINE = """
from companion_engine import hookimpl

@hookimpl
def startup(engine):
    pass
"""


@pytest.fixture
def log_lines() -> Any:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


def test_a_plugin_file_that_exits_at_import_is_refused_not_fatal(tmp_path: Path,
                                                                  log_lines: list[str]) -> None:
    """Issue 19.6: os._exit() at import used to kill the server silently."""
    write_plugin(tmp_path, "killer", EXITS)
    write_plugin(tmp_path, "fine", FINE)
    host = PluginHost.load(tmp_path, builtins=NO_BUILTINS, entry_points=False)
    # We are still alive; the killer is reported, the fine plugin loaded.
    assert "fine" in host.infos and "killer" not in host.infos
    (failure,) = host.errors
    assert failure.plugin == "killer" and failure.stage == "import"
    assert "ended the Python process (exited with code 3" in failure.error
    assert failure.source == str(tmp_path / "killer.py")
    assert any(f"importing local plugin {tmp_path / 'fine.py'}" in line for line in log_lines)


def test_a_plugin_file_that_hangs_at_import_is_refused(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, "sleeper", HANGS)
    reason = probe_plugin_file(path, timeout_s=1.0)
    assert reason is not None and "did not finish within 1 s" in reason


def test_probe_lets_ordinary_import_errors_through_to_the_real_import(tmp_path: Path) -> None:
    """A file that raises is not the probe's business: the real import reports the line."""
    path = write_plugin(tmp_path, "raiser", "x = 1\nraise ValueError('bad plugin')\n")
    assert probe_plugin_file(path) is None
    host = PluginHost.load(tmp_path, builtins=NO_BUILTINS, entry_points=False)
    (failure,) = host.errors
    assert failure.source == f"{path}:2" and "ValueError: bad plugin" in failure.error


def test_hook_wrappers_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    write_plugin(tmp_path, "wrapping", """
        from companion_engine import hookimpl

        @hookimpl(hookwrapper=True)
        def startup(engine):
            yield
    """)
    host = PluginHost.load(tmp_path, builtins=NO_BUILTINS, entry_points=False)
    assert "wrapping" not in host.infos
    assert "hook wrappers are not supported (startup)" in host.errors[0].error


def test_trace_logs_every_hook_call(tmp_path: Path, log_lines: list[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPANION_TRACE_PLUGINS", "1")
    PluginHost.load(None, entry_points=False)
    traced = [line for line in log_lines if line.startswith("plugin trace:")]
    assert any("companion_engine.builtin.tts.register_tts_backends() -> [espeak" in line
               for line in traced), traced


def test_tryfirst_order_is_honoured(tmp_path: Path) -> None:
    write_plugin(tmp_path, "a_first", """
        from companion_engine import hookimpl
        ORDER = []

        @hookimpl(tryfirst=True)
        def register_routes(engine):
            ORDER.append("a")
            return []
    """)
    write_plugin(tmp_path, "b_later", """
        from companion_engine import hookimpl
        import sys

        @hookimpl
        def register_routes(engine):
            sys.modules["companion_local_plugins.a_first"].ORDER.append("b")
            return []
    """)
    host = PluginHost.load(tmp_path, builtins=NO_BUILTINS, entry_points=False)
    host.collect_routes(engine=None)
    assert sys.modules["companion_local_plugins.a_first"].ORDER == ["a", "b"]


LIFECYCLE = """
from aiohttp import web
from companion_engine import hookimpl

VERSION = {version}
EVENTS = []

@hookimpl
def startup(engine):
    EVENTS.append(("startup", VERSION))

@hookimpl
async def shutdown(engine):
    EVENTS.append(("shutdown", VERSION))
"""

ROUTED = LIFECYCLE + """

async def hello(request):
    return web.json_response({{"version": VERSION}})

@hookimpl
def register_routes(engine):
    return [web.get("/plugin-hello", hello)]
"""


async def test_reload_stops_old_plugin_code_and_starts_the_new(make_client: MakeClient,
                                                               make_config: Any) -> None:
    config = make_config()
    plugins = config.path("plugins")
    write_plugin(plugins, "life", LIFECYCLE.format(version=1))
    write_plugin(plugins, "steady", LIFECYCLE.format(version=1))
    client = await make_client(config)
    v1 = sys.modules["companion_local_plugins.life"]
    steady = sys.modules["companion_local_plugins.steady"]
    assert v1.EVENTS == [("startup", 1)]
    write_plugin(plugins, "life", LIFECYCLE.format(version=2))
    resp = await client.post("/-/reload")
    assert resp.status == 200, await resp.text()
    v2 = sys.modules["companion_local_plugins.life"]
    assert v2 is not v1
    assert v1.EVENTS == [("startup", 1), ("shutdown", 1)]
    assert v2.EVENTS == [("startup", 2)]
    # The unchanged file kept its module: no second startup, no shutdown.
    assert sys.modules["companion_local_plugins.steady"] is steady
    assert steady.EVENTS == [("startup", 1)]
    health = await (await client.get("/health")).json()
    assert health["config"]["restart_required"] == []
    await client.close()
    assert v2.EVENTS == [("startup", 2), ("shutdown", 2)]
    assert steady.EVENTS == [("startup", 1), ("shutdown", 1)]


async def test_reloaded_route_plugin_is_reported_as_restart_required(
        make_client: MakeClient, make_config: Any) -> None:
    config = make_config()
    write_plugin(config.path("plugins"), "routed", ROUTED.format(version=1))
    client = await make_client(config)
    assert (await (await client.get("/plugin-hello")).json()) == {"version": 1}
    write_plugin(config.path("plugins"), "routed", ROUTED.format(version=2))
    assert (await client.post("/-/reload")).status == 200
    health = await (await client.get("/health")).json()
    assert any(item.startswith("plugins/routed.py: routes")
               for item in health["config"]["restart_required"])
    # Still reported after a later, unrelated reload; the old route keeps answering.
    assert (await client.post("/-/reload")).status == 200
    health = await (await client.get("/health")).json()
    assert any("routed.py" in item for item in health["config"]["restart_required"])
    assert (await (await client.get("/plugin-hello")).json()) == {"version": 1}


async def test_a_refused_reload_shows_its_plugin_failure_everywhere(
        make_client: MakeClient, make_config: Any) -> None:
    """Issue 19.8: /-/plugins said errors: [] while /health and the log had the failure."""
    config = make_config()
    client = await make_client(config)
    write_plugin(config.path("plugins"), "typo", "def broken(:\n")
    assert (await client.post("/-/reload")).status != 200
    health = await (await client.get("/health")).json()
    assert "typo" in health["config"]["last_error"]
    listing = await (await client.get("/-/plugins")).json()
    (error,) = [e for e in listing["errors"] if e["plugin"] == "typo"]
    assert error["rejected_reload"] is True and "SyntaxError" in error["error"]
    (config.path("plugins") / "typo.py").write_text(FINE)
    assert (await client.post("/-/reload")).status == 200
    listing = await (await client.get("/-/plugins")).json()
    assert listing["errors"] == []


async def test_an_exiting_plugin_file_on_reload_keeps_the_server_serving(
        make_client: MakeClient, make_config: Any) -> None:
    config = make_config()
    client = await make_client(config)
    write_plugin(config.path("plugins"), "killer", EXITS)
    resp = await client.post("/-/reload")
    assert resp.status != 200
    assert (await client.get("/health")).status == 200  # still here
    listing = await (await client.get("/-/plugins")).json()
    assert any(e["plugin"] == "killer" and "ended the Python process" in e["error"]
               for e in listing["errors"])
