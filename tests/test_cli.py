"""The ``companion`` CLI: serve, check, plugins, --help, ``python -m``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.plugin_helpers import write_plugin

REPO = Path(__file__).resolve().parents[1]


def companion(*args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COMPANION_LOAD_PLUGINS": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "companion_engine", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def make_project(root: Path, profile: dict | None = None) -> Path:
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    (root / "characters").mkdir(exist_ok=True)
    base = {"llm": {"model": "openai/test", "api_base": "http://127.0.0.1:9/v1"},
            "speech": {"enabled": False, "tts": "none"}}
    (root / "profiles" / "default.yaml").write_text(yaml.safe_dump({**base, **(profile or {})}))
    (root / "companion.yaml").write_text("reload: false\n")
    return root


def test_help_reads_well(tmp_path: Path) -> None:
    out = companion("--help", cwd=tmp_path)
    assert out.returncode == 0
    for verb in ("serve", "check", "plugins"):
        assert verb in out.stdout
    serve = companion("serve", "--help", cwd=tmp_path)
    for flag in ("--config", "--host", "--port", "--profile", "--no-reload"):
        assert flag in serve.stdout


def test_check_ok_prints_summary(tmp_path: Path) -> None:
    out = companion("check", cwd=make_project(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "profile default: ok" in out.stdout


def test_check_reports_file_and_line(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "profiles" / "other.yaml").write_text("llm:\n  model: openai/x\n  temprature: 1\n")
    (root / "profiles" / "third.yaml").write_text("output: [strip_thinking]\n")
    out = companion("check", cwd=root)
    assert out.returncode == 1
    assert "profiles/other.yaml:3: llm.temprature: unknown option" in out.stderr
    assert "profiles/third.yaml:1: output[0]: unknown stage 'strip_thinking'" in out.stderr
    assert "did you mean 'strip_think'" in out.stderr


def test_check_reports_broken_plugin(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    write_plugin(root / "plugins", "broken", "import nothing_here_at_all\n")
    out = companion("check", cwd=root)
    assert out.returncode == 1
    assert "broken.py:1" in out.stderr and "ModuleNotFoundError" in out.stderr


def test_plugins_json(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    write_plugin(root / "plugins", "broken", "raise ValueError('x')\n")
    out = companion("plugins", "--json", cwd=root)
    assert out.returncode == 1  # a plugin failed (issue 19.8)
    data = json.loads(out.stdout)
    assert any(p["name"] == "companion_engine.routes.system" for p in data["plugins"])
    assert data["errors"][0]["plugin"] == "broken"
    human = companion("plugins", cwd=root)
    assert human.returncode == 1
    assert "FAILED broken" in human.stdout
    assert "no third-party plugins installed" not in human.stdout
    assert "1 plugin(s) failed to load" in human.stderr
    (root / "plugins" / "broken.py").unlink()
    fine = companion("plugins", cwd=root)
    assert fine.returncode == 0 and "no third-party plugins installed" in fine.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_and_logs_ready_line(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    port = free_port()
    env = {**os.environ, "COMPANION_LOAD_PLUGINS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "companion_engine", "serve", "--port",
                             str(port), "--no-reload"], cwd=root, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        body = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    body = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.05)
        assert body is not None and body["status"] == "degraded"  # its LLM never answers
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    ready = [line for line in err.splitlines() if "ready on" in line]
    assert ready, err
    assert f"http://127.0.0.1:{port}" in ready[0]
    assert "profile=default" in ready[0] and "llm=openai/test" in ready[0]
    # Issue 19.7: start-up says so, one line beside the ready line.
    lines = err.splitlines()
    at = lines.index(ready[0])
    warning = [line for line in lines[at:at + 3] if "WARNING" in line]
    assert warning and "LLM provider for openai/test is unreachable" in warning[0], err
    assert "cannot reach http://127.0.0.1:9/v1/models" in warning[0]


def test_serve_refuses_bad_config_cleanly(tmp_path: Path) -> None:
    root = make_project(tmp_path, {"output": ["nope"]})
    out = companion("serve", cwd=root)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "output[0]: unknown stage 'nope'" in out.stderr


@pytest.mark.parametrize("args", [["serve", "--port", "x"], ["frobnicate"]])
def test_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    out = companion(*args, cwd=tmp_path)
    assert out.returncode == 2


def test_serve_on_a_busy_port_fails_cleanly(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = companion("serve", "--port", str(port), "--no-reload", cwd=root, timeout=30)
    assert out.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr
