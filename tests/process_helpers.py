"""Real ``companion serve`` processes for multi-process tests, and a scripted LLM in a thread.

``ServeProcess`` runs the CLI exactly as a user does (its log goes to a file the
test can show on failure). ``ThreadedLLM`` runs the scripted LLM server on its own
event loop, so one instance can serve every test of a module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from companion_engine.testing import LLMTestServer, Script, free_port


class ThreadedLLM:
    """``LLMTestServer`` on a background thread's loop (module-scoped fixtures)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: LLMTestServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(LLMTestServer.start())
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.close())
        self.loop.close()

    def start(self) -> ThreadedLLM:
        self._thread.start()
        self._ready.wait(10)
        return self

    @property
    def openai_base(self) -> str:
        assert self.server is not None
        return self.server.openai_base

    def push(self, *scripts: Script) -> None:
        assert self.server is not None
        self.loop.call_soon_threadsafe(self.server.push, *scripts)

    def set_default(self, script: Script) -> None:
        assert self.server is not None
        self.loop.call_soon_threadsafe(setattr, self.server, "default", script)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class ServeProcess:
    """``python -m companion_engine serve`` in its own process group, logging to a file."""

    def __init__(self, root: Path, *, port: int | None = None, name: str = "serve",
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.log = root / f"{name}.log"
        self.env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "COMPANION_LOAD_PLUGINS": "", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60, *, wait: bool = True) -> ServeProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "companion_engine", "serve", "--config",
                 str(self.root / "companion.yaml"), "--port", str(self.port)],
                cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"companion serve exited:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"companion serve did not answer /health:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 40) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def stop_all(procs: list[ServeProcess]) -> None:
    """SIGTERM every process at once, then wait for each (stopping takes a moment)."""
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.stop()


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_until(check: Any, timeout: float = 20, step: float = 0.1) -> Any:
    """Poll ``check()`` until it returns something truthy (returned) or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)
