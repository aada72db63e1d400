"""Screenshots of the web app's main views, light and dark, desktop and 360 px wide.

Runs what the browser tests run (a real ``companion serve``, the scripted LLM, headless
Chromium) with a small demo: two characters (one a PNG card with its own picture), a
conversation with actions, dialogue and an expression, the author's panel with an
activated lorebook entry, the character manager and the phone layout.

    .venv/bin/python scripts/screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from companion_engine.cards import png  # noqa: E402
from companion_engine.testing import Script  # noqa: E402
from tests.web_helpers import (  # noqa: E402
    EngineProcess,
    LLMThread,
    emulate,
    png_card,
    start_browser,
    stop_browser,
    wait_for,
    write_web_project,
)

DESKTOP = (1280, 800)
PHONE = (360, 740)
REPLY = ['*tilts her head and smiles* ', '"The', ' northern', ' peaks?', ' [joy]', ' I', ' know',
         ' them', ' well."', ' ', '*points*', ' ', '"We', ' can', ' be', ' at', ' the', ' pass',
         ' by', ' **dusk**,', ' if', ' you', ' keep', ' up."']


def portrait(size: int = 128) -> bytes:
    """A small drawn portrait (a PNG): a head and shoulders on a warm gradient."""
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            t = y / size
            r, g, b = 250 - 70 * t, 160 - 40 * t, 120 + 80 * t
            head = math.hypot(x - size * 0.5, y - size * 0.42) < size * 0.2
            body = (y > size * 0.66 and
                    math.hypot((x - size * 0.5) / 1.6, y - size * 1.02) < size * 0.36)
            hair = math.hypot(x - size * 0.5, y - size * 0.36) < size * 0.24 and y < size * 0.42
            if hair:
                r, g, b = 70, 40, 60
            elif head:
                r, g, b = 250, 214, 186
            elif body:
                r, g, b = 90, 75, 200
            row += bytes((int(r), int(g), int(b)))
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"".join(rows), 9)
    return png.encode([png.Chunk(b"IHDR", ihdr), png.Chunk(b"IDAT", pixels),
                       png.Chunk(b"IEND", b"")])


def shoot(driver, out: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    path = out / f"{name}.png"
    path.write_bytes(driver.get_screenshot_as_png())
    print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} "
          f"{path.stat().st_size // 1024} KB")


def js(driver, expr: str):  # type: ignore[no-untyped-def]
    return driver.execute_script(f"return {expr}")


def ready(driver, url: str, hash_: str = "") -> None:  # type: ignore[no-untyped-def]
    driver.get(f"{url}/app{hash_}")
    driver.refresh()  # a new hash alone would not load the page again
    wait_for(lambda: js(driver, "window.__companion && window.__companion.state.ready"), 20,
             "the app")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="companion-shots-"))
    llm = LLMThread()
    config = write_web_project(root, llm.openai_base)
    (root / "characters" / "seraphina.png").write_bytes(png_card(
        "Seraphina", "Seraphina is a gentle forest guardian who knows every path of the north.",
        "*looks up from the campfire* Oh, {{user}}! You found the clearing.", portrait()))
    engine = EngineProcess(config)
    driver = start_browser(*DESKTOP)
    try:
        llm.push(Script(tokens=["warm"]))
        engine.request("POST", "/api/chat", {"messages": [{"role": "user", "content": "hi"}],
                                              "enable_tts": False}, timeout=120)
        engine.request("POST", "/api/characters/seraphina/activate")
        # A conversation to show.
        emulate(driver, width=DESKTOP[0], height=DESKTOP[1], dark=False)
        ready(driver, engine.url)
        llm.push(Script(tokens=REPLY, delay_s=0.03))
        box = driver.find_element("id", "composer-input")
        box.send_keys("Do you know the way to the northern peaks?\n")
        wait_for(lambda: js(driver, "window.__companion.state.turns") == 1, 30, "the reply")
        conversation = js(driver, "window.__companion.state.conversationId")
        llm.push(Script(tokens=["*laughs softly* ", '"Dragons', ' sleep', ' there,', ' they',
                                ' say.', ' Shall', ' we', ' find', ' out?"']))
        box.send_keys("Is it true a dragon sleeps up there?\n")
        wait_for(lambda: js(driver, "window.__companion.state.turns") == 2, 30, "the reply")
        both = (("light", False), ("dark", True))

        def themes(name: str, width: int, height: int, mobile: bool = False) -> None:
            for theme, dark in both:
                emulate(driver, width=width, height=height, dark=dark, mobile=mobile)
                time.sleep(0.2)
                shoot(driver, args.out, f"{name}-{theme}")

        # The chat, mid-speech: the mouth moves and the speaking ring shows.
        ready(driver, engine.url, f"#/c/{conversation}")
        llm.push(Script(tokens=['"Then', ' follow', ' me,', ' Traveler.', ' Quietly', ' now,',
                                ' the', ' forest', ' is', ' listening."'], delay_s=0.02))
        driver.find_element("id", "composer-input").send_keys("Lead the way!\n")
        wait_for(lambda: js(driver, "window.__companion.audio.speaking && "
                                    "window.__companion.audio.shape !== 'closed'"), 30, "speech")
        themes("web-chat", *DESKTOP)
        wait_for(lambda: js(driver, "!window.__companion.audio.speaking"), 30, "the end")
        # The author's panel with an activated lorebook entry (the Aria card's book).
        engine.request("POST", "/api/characters/aria/activate")
        emulate(driver, width=DESKTOP[0], height=DESKTOP[1], dark=False)
        ready(driver, engine.url)
        driver.find_element("id", "toggle-panel").click()
        driver.find_element("id", "composer-input").send_keys("Have you seen the dragon?")
        wait_for(lambda: js(driver, "document.querySelector('#lore-list .lore-item')"), 20,
                 "the lorebook entry")
        themes("web-panel", *DESKTOP)
        engine.request("POST", "/api/characters/seraphina/activate")
        emulate(driver, width=DESKTOP[0], height=DESKTOP[1], dark=False)
        ready(driver, engine.url, "#/characters")
        themes("web-characters", *DESKTOP)
        # The phone layout: the chat, and the drawer open.
        emulate(driver, width=PHONE[0], height=PHONE[1], dark=False, mobile=True)
        ready(driver, engine.url, f"#/c/{conversation}")
        themes("web-phone-chat", *PHONE, mobile=True)
        driver.find_element("id", "toggle-nav").click()
        themes("web-phone-nav", *PHONE, mobile=True)
    finally:
        stop_browser(driver)
        engine.stop()
        llm.close()


if __name__ == "__main__":
    main()
