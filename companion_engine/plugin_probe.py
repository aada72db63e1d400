"""Import a local plugin file in a throwaway subprocess before the server imports it.

A ``plugins/*.py`` file runs arbitrary code at import. One that raises is
isolated by the plugin host as usual, but one that calls ``os._exit()``, kills
its own process or never finishes importing would take the server down (or
hang a reload) with it. So each new or changed file is first imported by a
child interpreter with the server's ``sys.path``; the child prints a marker
once the import returned (or raised: the real import then reports the error
with its line). No marker means the file ended or hung the interpreter, and it
is refused with a message saying which.

Results are cached by the file's content, so an unchanged file is probed once
per process, and the probes of several files run in parallel.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: Seconds a plugin file may take to import (``COMPANION_PLUGIN_IMPORT_TIMEOUT``).
DEFAULT_TIMEOUT_S = 20.0
MARKER = "@@companion-plugin-probe:"

_CHILD = f"""
import importlib.util, os, sys
path, name = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location(name, path)
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
try:
    spec.loader.exec_module(module)
    outcome = "imported"
except BaseException:
    outcome = "raised"
sys.stdout.write("\\n{MARKER}" + outcome + "\\n")
sys.stdout.flush()
os._exit(0)
"""

#: sha256 of (name, source) -> None (fine) or the reason the file is refused.
_verdicts: dict[str, str | None] = {}


def _timeout() -> float:
    try:
        return float(os.environ.get("COMPANION_PLUGIN_IMPORT_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def probe_plugin_file(path: Path, timeout_s: float | None = None) -> str | None:
    """None if importing ``path`` returns (or raises) normally; else why it is refused."""
    timeout_s = _timeout() if timeout_s is None else timeout_s
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), f"companion_local_plugins.{path.stem}"],
            capture_output=True, text=True, timeout=timeout_s, env=env, cwd=os.getcwd(),
            stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return (f"importing it did not finish within {timeout_s:g} s (a plugin must not block "
                "at import; do slow work in startup() or a stage's setup()); not loaded")
    except OSError:  # cannot start a child at all: do not block plugins for that
        return None
    if MARKER in done.stdout:
        return None
    code = done.returncode
    how = (f"killed by signal {signal.Signals(-code).name}" if code < 0 else
           f"exited with code {code}")
    return (f"importing it ended the Python process ({how}; e.g. os._exit() at import), "
            "so the server refused to import it")


def probe_plugin_files(paths: list[Path]) -> dict[Path, str]:
    """Probe the new or changed files among ``paths`` at once; ``{path: reason}`` of refusals."""
    keys: dict[Path, str] = {}
    for path in paths:
        try:
            source = path.read_bytes()
        except OSError:
            continue  # the real import reports it
        keys[path] = hashlib.sha256(path.name.encode() + b"\0" + source).hexdigest()
    todo = [p for p, k in keys.items() if k not in _verdicts]
    if todo:
        with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:
            for path, verdict in zip(todo, pool.map(probe_plugin_file, todo), strict=True):
                _verdicts[keys[path]] = verdict
    return {p: v for p, k in keys.items() if (v := _verdicts.get(k)) is not None}
