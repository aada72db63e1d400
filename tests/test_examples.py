"""The example plugins in examples/: separate packages written only against the public API.

Each one's own test suite runs here (in a child pytest, as its author would run it), each
installs as a real distribution whose entry point the plugin host finds, and
``companion-note`` is exactly what ``companion plugins new note --kind prompt`` writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from companion_engine.plugins import PluginHost
from companion_engine.scaffold import render
from tests.conftest import REPO

EXAMPLES = REPO / "examples"
PACKAGES = sorted(p for p in EXAMPLES.iterdir() if (p / "pyproject.toml").is_file())
#: Example -> the stages its plugin registers.
STAGES = {
    "companion-chime": {"tts_backend": ["chime"]},
    "companion-note": {"prompt_builder": ["note"]},
    "companion-recent-history": {"prompt_builder": ["recent_history"]},
    "companion-word-limit": {"sanitizer": ["word_limit"]},
}


def test_every_example_is_listed() -> None:
    assert [p.name for p in PACKAGES] == sorted(STAGES)


def run_package_tests(roots: list[Path], workdir: Path) -> str:
    """Run the test suites of these plugin packages in one child pytest (one interpreter,
    so the engine is imported once), each test file exactly as the package has it, with the
    package importable as its own ``pythonpath = ["."]`` makes it; returns the output."""
    run = workdir / "suites"
    run.mkdir()
    (run / "conftest.py").write_text('pytest_plugins = ["companion_engine.testing"]\n')
    for root in roots:
        for test in (root / "tests").glob("test_*.py"):
            shutil.copy(test, run / test.name)
    env = {**os.environ, "COMPANION_LOAD_PLUGINS": "",
           "PYTHONPATH": os.pathsep.join(str(r) for r in roots)}
    env.pop("PYTEST_ADDOPTS", None)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
         "-W", "error::RuntimeWarning", "-W", "ignore::DeprecationWarning", str(run)],
        cwd=run, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return out.stdout


def test_example_and_scaffolded_suites_pass(tmp_path: Path) -> None:
    """The examples' suites, and those of a freshly scaffolded package of every other kind
    (companion-note is the prompt kind), pass: run together in one child pytest."""
    from companion_engine.scaffold import KINDS, write_package

    generated = [write_package(f"my-{kind}", kind, tmp_path / "new")
                 for kind in KINDS if kind != "prompt"]
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is not None:
        lint = subprocess.run([ruff, "check", "--no-cache", *map(str, generated)],
                              capture_output=True, text=True, check=False)
        assert lint.returncode == 0, lint.stdout
    output = run_package_tests([*PACKAGES, *generated], tmp_path)
    assert " passed" in output and "failed" not in output.splitlines()[-1]


def test_note_example_is_the_scaffold_output() -> None:
    committed = {str(p.relative_to(EXAMPLES / "companion-note")): p.read_text(encoding="utf-8")
                 for p in (EXAMPLES / "companion-note").rglob("*")
                 if p.is_file() and not any(part.startswith(("__pycache__", ".")) or
                                            part.endswith(".egg-info") or part == "build"
                                            for part in p.relative_to(EXAMPLES).parts)}
    assert committed == render("note", "prompt")


def test_examples_install_and_load_through_their_entry_points(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = []
    for package in PACKAGES:  # build from copies: the source folders stay clean
        shutil.copytree(package, tmp_path / "src" / package.name,
                        ignore=shutil.ignore_patterns("__pycache__"))
        sources.append(str(tmp_path / "src" / package.name))
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", "--target", str(site),
                          *sources], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("COMPANION_LOAD_PLUGINS", raising=False)
    for name in STAGES:
        monkeypatch.delitem(sys.modules, name.replace("-", "_"), raising=False)
    host = PluginHost.load(None, builtins=())
    found = {p["distribution"]: p["stages"] for p in host.listing()["plugins"]}
    for dist, stages in STAGES.items():
        assert found.get(dist) == stages, (dist, found)
    assert host.errors == []


def test_plugins_new_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from companion_engine.cli import main

    assert main(["plugins", "new", "my-tts", "--kind", "tts", "--dir", str(tmp_path)]) == 0
    assert "wrote " in capsys.readouterr().out
    assert (tmp_path / "companion-my-tts" / "companion_my_tts" / "__init__.py").is_file()
    assert main(["plugins", "new", "my-tts", "--kind", "tts", "--dir", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["plugins", "new", "Not A Name"]) == 1
    assert "invalid plugin name" in capsys.readouterr().err


def test_plugins_install_reports_the_stages_it_added(tmp_path: Path) -> None:
    """``companion plugins install`` pip-installs into the engine's own environment (here a
    throwaway venv that sees this checkout) and lists what the new plugin registers."""
    import site
    import venv

    # pip comes from the base interpreter's site-packages; installs go into the new venv.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    package = tmp_path / "companion-word-limit"
    shutil.copytree(EXAMPLES / "companion-word-limit", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()])}
    env.pop("COMPANION_LOAD_PLUGINS", None)
    out = subprocess.run([str(python), "-m", "companion_engine", "plugins", "install",
                          "--no-deps", "--no-build-isolation", "--no-index", str(package)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "installed companion_word_limit 0.1.0 (companion-word-limit): sanitizers: " \
           "word_limit" in out.stdout
    nothing = subprocess.run([str(python), "-m", "companion_engine", "plugins", "install"],
                             env=env, capture_output=True, text=True, check=False)
    assert nothing.returncode == 2 and "name what to install" in nothing.stderr
