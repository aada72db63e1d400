"""``companion serve``: ``--no-reload`` turns the watcher off, SIGHUP reloads on demand,
and a reload keeps the command line's ``--profile``. A real process, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from companion_engine.testing import free_port
from companion_engine.testing.project import write_yaml
from tests.reload_helpers import PROBE_PLUGIN, probe_profile, save_yaml, wait_until

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Path, int]]:
    """``companion serve --no-reload --profile cli`` over a temp folder; yields (url, root, pid)."""
    write_yaml(tmp_path / "companion.yaml", {"profile": "default", "reload": True})
    write_yaml(tmp_path / "profiles" / "default.yaml", probe_profile("default"))
    write_yaml(tmp_path / "profiles" / "cli.yaml", probe_profile("cli-1"))
    for sub in ("characters", "plugins", "data"):
        (tmp_path / sub).mkdir()
    (tmp_path / "plugins" / "probe.py").write_text(PROBE_PLUGIN)
    port = free_port()
    env = {**os.environ, "COMPANION_LOAD_PLUGINS": ""}
    for var in ("APP_PORT", "APP_HOST", "COMPANION_PROFILE"):
        env.pop(var, None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "companion_engine", "serve", "--config",
        str(tmp_path / "companion.yaml"), "--port", str(port), "--profile", "cli",
        "--no-reload", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until(lambda: _up(url, proc), within=30, what="server start")
        yield url, tmp_path, proc.pid
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, stderr.decode()[-2000:]


async def _up(url: str, proc: asyncio.subprocess.Process) -> bool:
    if proc.returncode is not None:
        raise AssertionError(f"server exited with {proc.returncode}")
    try:
        await get(url, "/health")
    except aiohttp.ClientError:
        return False
    return True


async def get(url: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url + path) as resp:
        return await resp.json()


async def test_no_reload_and_sighup(served: tuple[str, Path, int]) -> None:
    url, root, pid = served
    assert (await get(url, "/api/status"))["profile"] == "cli"
    save_yaml(root / "profiles" / "cli.yaml", probe_profile("cli-2"))
    await asyncio.sleep(0.5)
    assert (await get(url, "/health"))["config"]["generation"] == 1  # no watcher

    os.kill(pid, signal.SIGHUP)

    async def reloaded() -> bool:
        return (await get(url, "/health"))["config"]["generation"] == 2

    await wait_until(reloaded, what="reload after SIGHUP")
    status = await get(url, "/api/status")
    assert status["profile"] == "cli"  # --profile survives the reload
    # A profile-only edit needs no restart: --port and --no-reload are the effective
    # settings, not the file's port 3000 and reload: true (issue 19.11).
    assert (await get(url, "/health"))["config"]["restart_required"] == []
    config = await get(url, "/-/config")
    assert config["profile"]["output"][0]["options"]["label"] == "cli-2"
