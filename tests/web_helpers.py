"""A real browser against a real server: the harness of the web app's tests, screenshots
and benchmark.

- ``find_chromium()``: Debian's ``chromium`` + ``chromium-driver`` (or what
  ``COMPANION_CHROMIUM`` / ``COMPANION_CHROMEDRIVER`` name), None when absent;
- ``start_browser()``: headless Chromium through Selenium, with the flags that keep it
  off the network and a fresh profile directory;
- ``LLMThread``: the scripted LLM server (``companion_engine.testing``) on its own
  event loop in a thread, so synchronous Selenium tests can script it;
- ``EngineProcess``: ``companion serve`` as a subprocess over a project folder that
  ``write_web_project`` lays out (hot reload on, espeak voice, a character with a
  lorebook).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from companion_engine.testing import LLMTestServer, Script, free_port
from companion_engine.testing.project import write_yaml

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
#: Headless, and nothing that reaches the network (updates, sync, QUIC probes).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--mute-audio")
KEY = "web-test-key-0123456789"

ARIA = {
    "spec": "chara_card_v2", "spec_version": "2.0",
    "data": {
        "name": "Aria", "description": "Aria is a cheerful guide of the northern mountains.",
        "personality": "warm, curious", "scenario": "A mountain pass at dusk.",
        "first_mes": "*waves* Hello, {{user}}! I am Aria.",
        "alternate_greetings": ["*bows* Welcome back, {{user}}."],
        "mes_example": "", "creator_notes": "", "system_prompt": "",
        "post_history_instructions": "", "tags": ["guide"], "creator": "tests",
        "character_version": "1", "extensions": {},
        "character_book": {"name": "Aria's world", "entries": [
            {"keys": ["dragon", "wyrm"], "content": "Dragons sleep under the northern peaks.",
             "comment": "Dragons of the north", "enabled": True, "insertion_order": 10,
             "id": 1, "extensions": {}},
            {"keys": ["river"], "content": "The river runs cold all year.",
             "comment": "The river", "enabled": True, "insertion_order": 20, "id": 2,
             "extensions": {}},
        ]},
    },
}


def find_chromium() -> tuple[str, str] | None:
    """(chromium, chromedriver) executables, or None."""
    browser = os.environ.get("COMPANION_CHROMIUM") or next(
        (p for p in CHROMIUM if Path(p).exists()), None) or shutil.which("chromium")
    driver = os.environ.get("COMPANION_CHROMEDRIVER") or next(
        (p for p in CHROMEDRIVER if Path(p).exists()), None) or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_browser(width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium driven by Selenium; browser logs are kept for ``get_log``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    browser, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="companion-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads = Path(profile) / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.companion_profile = profile  # type: ignore[attr-defined]
    chrome.companion_downloads = downloads  # type: ignore[attr-defined]
    chrome.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    return chrome


def stop_browser(chrome: Any) -> None:
    try:
        chrome.quit()
    finally:
        shutil.rmtree(chrome.companion_profile, ignore_errors=True)


def emulate(chrome: Any, *, width: int, height: int, dark: bool, mobile: bool = False) -> None:
    """Viewport size and ``prefers-color-scheme`` (through the DevTools protocol)."""
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
    chrome.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})


def wait_for(check: Callable[[], Any], within: float = 10.0, what: str = "condition",
             every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; its value, or AssertionError."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # the page is navigating, an element is not there yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what} "
                                 f"(last: {last!r})")
        time.sleep(every)


# --- the scripted LLM in a thread ----------------------------------------------------------


class LLMThread:
    """``LLMTestServer`` on its own loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: LLMTestServer | None = None
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(LLMTestServer.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="llm-test-server", daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the scripted LLM server did not start")

    @property
    def openai_base(self) -> str:
        assert self.server is not None
        return self.server.openai_base

    def push(self, *scripts: Script) -> None:
        assert self.server is not None
        server = self.server
        self.loop.call_soon_threadsafe(server.push, *scripts)

    def clear(self) -> None:
        assert self.server is not None
        self.loop.call_soon_threadsafe(self.server.scripts.clear)

    @property
    def requests(self) -> list[Any]:
        assert self.server is not None
        return list(self.server.requests)

    def close(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# --- the engine as a subprocess ------------------------------------------------------------


def web_profile(llm_base: str, **changes: Any) -> dict[str, Any]:
    return {
        "llm": {"model": "openai/test-model", "api_base": llm_base, "timeout_s": 10},
        "character": "aria",
        "user_name": "Traveler",
        "speech": {"enabled": True, "tts": {"espeak": {"voice": "en-us", "rate": 220}}},
        **changes,
    }


def web_config(**changes: Any) -> dict[str, Any]:
    return {"reload": True, "rate_limit": {"requests": 100_000, "window_s": 60}, **changes}


def write_web_project(root: Path, llm_base: str) -> Path:
    """A project folder with hot reload on; returns ``companion.yaml``."""
    write_yaml(root / "profiles" / "default.yaml", web_profile(llm_base))
    for sub in ("characters", "plugins", "data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "characters" / "aria.json").write_text(json.dumps(ARIA), encoding="utf-8")
    return write_yaml(root / "companion.yaml", web_config())


class EngineProcess:
    """``companion serve`` over a project folder, on a free port, as its own process."""

    def __init__(self, config_file: Path, port: int | None = None) -> None:
        self.config_file = config_file
        self.port = port or free_port()
        self.log_path = config_file.parent / "serve.log"
        env = {**os.environ, "COMPANION_LOAD_PLUGINS": "", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        for var in ("APP_PORT", "APP_HOST", "COMPANION_PROFILE", "COMPANION_API_KEY"):
            env.pop(var, None)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "companion_engine", "serve", "--config", str(config_file),
             "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        wait_for(self._up, within=60, what="companion serve to answer /health", every=0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"companion serve exited with {self.proc.returncode}:\n"
                               + self.log())
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")[-4000:]

    def request(self, method: str, path: str, body: Any = None, key: str | None = None,
                timeout: float = 20.0) -> tuple[int, Any]:
        """A JSON request to the engine: (status, parsed body)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def png_card(name: str, description: str, first_mes: str, image: bytes | None = None) -> bytes:
    """A V2 PNG card with a picture (a coloured square unless ``image``)."""
    from companion_engine.cards.export import png_bytes
    from companion_engine.cards.formats import card_from_object

    parsed = card_from_object({"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": name, "description": description, "first_mes": first_mes, "personality": "",
        "scenario": "", "mes_example": ""}})
    return png_bytes(parsed.character, image)


def drop_file_js(selector: str, name: str, mime: str, data: bytes) -> tuple[str, list[Any]]:
    """Script + args that drop a file on an element, as a user dragging it there would."""
    script = """
        const [selector, name, mime, b64] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: mime}));
        const zone = document.querySelector(selector);
        for (const type of ["dragenter", "dragover", "drop"]) {
          zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true,
                                                  dataTransfer: transfer}));
        }
    """
    return script, [selector, name, mime, base64.b64encode(data).decode()]
