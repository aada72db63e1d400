"""The web app at ``/app`` in a real headless Chromium, against a real ``companion serve``
process, the scripted LLM server and the real espeak voice.

One browser and one server for the module; every test loads the page afresh (storage
cleared) and, when it ends, the page must have logged no console error, no CSP
violation and no error of its own. Tests wait for behaviour, never for a duration.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from companion_engine.testing import Script
from tests.web_helpers import (
    KEY,
    EngineProcess,
    LLMThread,
    drop_file_js,
    emulate,
    find_chromium,
    png_card,
    start_browser,
    stop_browser,
    wait_for,
    web_config,
    write_web_project,
)

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium: install Debian's chromium and chromium-driver (.ci/run does), or "
           "point COMPANION_CHROMIUM and COMPANION_CHROMEDRIVER at them")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

DESKTOP = {"width": 1280, "height": 860}


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMThread]:
    server = LLMThread()
    yield server
    server.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, llm: LLMThread) -> Iterator[EngineProcess]:
    config = write_web_project(tmp_path_factory.mktemp("web"), llm.openai_base)
    proc = EngineProcess(config)
    try:
        # The first turn of a process waits for LiteLLM's import: pay it here, once.
        llm.push(Script(tokens=["warm"]))
        status, body = proc.request("POST", "/api/chat", {"messages": [
            {"role": "user", "content": "warm up"}], "enable_tts": False}, timeout=120)
        assert status == 200, body
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chrome = start_browser(**DESKTOP)
    yield chrome
    stop_browser(chrome)


class Page:
    """The app in the browser, with the helpers tests need."""

    def __init__(self, driver: Any, engine: EngineProcess, llm: LLMThread) -> None:
        self.driver = driver
        self.engine = engine
        self.llm = llm
        #: Substrings of console errors this test expects (e.g. a 401 before the key).
        self.expected_console: list[str] = []

    def open(self, path: str = "/app") -> None:
        """Load the app with empty storage."""
        origin = self.engine.url
        self.driver.execute_cdp_cmd("Storage.clearDataForOrigin", {
            "origin": origin, "storageTypes": "local_storage,session_storage"})
        self.driver.get_log("browser")  # drop what the previous page logged
        self.driver.get(origin + path)
        self.wait("window.__companion && window.__companion.state.ready", what="the app to start")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def value(self, expr: str) -> Any:
        return self.js(f"return {expr}")

    def wait(self, expr: str, within: float = 15.0, what: str | None = None) -> Any:
        return wait_for(lambda: self.value(expr), within, what or expr)

    @property
    def state(self) -> dict[str, Any]:
        return self.value("window.__companion.state")

    def find(self, css: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def click(self, css: str) -> None:
        """Click an element, again if the page re-rendered it in between (a list refresh)."""
        def attempt() -> bool:
            self.find(css).click()
            return True

        wait_for(attempt, what=f"a click on {css}")

    def find_all(self, css: str) -> list[Any]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.value(f"document.querySelector({json.dumps(css)})?.textContent ?? ''")

    def visible(self, css: str) -> bool:
        found = self.find_all(css)
        return bool(found) and found[0].is_displayed()

    def type(self, text: str, *, send: bool = False) -> None:
        box = self.find("#composer-input")
        box.clear()
        box.send_keys(text)
        if send:
            box.send_keys(Keys.ENTER)

    def send(self, text: str) -> dict[str, Any]:
        """Type a message, press Enter, wait for the turn to end; the turn's summary."""
        turns = self.state["turns"]
        self.type(text, send=True)
        self.wait(f"window.__companion.state.turns > {turns}", within=30, what="the turn to end")
        return self.state["lastTurn"]

    def last_reply(self) -> dict[str, Any]:
        return self.state["messages"][-1]

    def audio(self) -> dict[str, Any]:
        return self.value("window.__companion.audio")

    def console_errors(self) -> list[str]:
        logs = self.driver.get_log("browser")
        return [e["message"] for e in logs if e["level"] == "SEVERE"
                and not any(x in e["message"] for x in self.expected_console)]

    def assert_clean(self) -> None:
        """No console error, no CSP violation, no error the page recorded."""
        csp = self.value("window.__companion ? window.__companion.cspViolations : []")
        errors = self.value("window.__companion ? window.__companion.errors : []")
        console = self.console_errors()
        assert not csp, f"CSP violations: {csp}"
        assert not console, f"console errors: {console}"
        assert not errors, f"the page recorded errors: {errors}"


@pytest.fixture
def page(browser: Any, engine: EngineProcess, llm: LLMThread) -> Iterator[Page]:
    emulate(browser, **DESKTOP, dark=False)
    llm.clear()
    p = Page(browser, engine, llm)
    p.open()
    yield p
    p.assert_clean()


def stored(engine: EngineProcess, conversation_id: str) -> list[dict[str, Any]]:
    status, body = engine.request("GET", f"/api/conversations/{conversation_id}")
    assert status == 200, body
    return body["data"]["messages"]


def test_serve_prints_where_the_app_is(engine: EngineProcess) -> None:
    assert f"web app: {engine.url}/app" in engine.log()


# --- chat ----------------------------------------------------------------------------------


REPLY = ["*smiles* ", "Hello", " there,", " **brave**", " traveler.", " See", " the", " [joy]",
         " stars", " at", " https://example.org/sky", "?"]


SHIFTS = """
  window.__shifts = [];
  new PerformanceObserver((list) => window.__shifts.push(...list.getEntries().map(
    (e) => ({value: e.value, at: e.startTime, sources: e.sources.map(
      (s) => s.node?.id || s.node?.className || s.node?.nodeName)})))).observe(
    {type: "layout-shift"});
"""


def test_reply_streams_in_and_renders_as_safe_markdown(page: Page) -> None:
    page.llm.push(Script(tokens=REPLY, delay_s=0.12))
    page.js(SHIFTS)
    page.type("Hi Aria!", send=True)
    # While the reply streams, the page already shows the part received so far.
    partial = page.wait("window.__companion.state.streaming && "
                        "document.querySelector('#log .msg:last-child .msg-body').textContent",
                        what="streamed text on the page")
    full = "".join(REPLY)
    page.wait("window.__companion.state.turns > 0", within=30)
    reply = page.last_reply()
    assert reply == {"role": "assistant", "content": full, "status": "complete", "error": None}
    body = page.find("#log .msg:last-child .msg-body")
    shown = " ".join(body.text.split())
    assert shown == "smiles Hello there, brave traveler. See the joy stars at https://example.org/sky?"
    partial = " ".join(partial.split())
    assert partial and len(partial) < len(shown) and shown.startswith(partial)
    assert page.text("#log .msg:last-child em.action") == "smiles"
    assert page.text("#log .msg:last-child strong") == "brave"
    assert page.text("#log .msg:last-child .expr") == "joy"
    link = page.find("#log .msg:last-child a")
    assert link.get_attribute("href") == "https://example.org/sky"
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    assert "first token" in page.text("#log .msg:last-child .msg-meta")
    # Nothing on the page moved while the text streamed in (layout-shift entries).
    assert page.value("window.__shifts") == []
    # The user's message and the reply are stored on the server, the greeting first.
    messages = stored(page.engine, page.state["conversationId"])
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("assistant", "*waves* Hello, Traveler! I am Aria.", "complete"),
        ("user", "Hi Aria!", "complete"),
        ("assistant", full, "complete")]


def test_model_markup_is_shown_as_text_never_run(page: Page) -> None:
    hostile = ['<img src=x onerror="window.pwned=1">', " <b>bold</b>", ' <a href="javascript:x">',
               "click</a>", " [link](javascript:alert(1))", " <iframe srcdoc=x></iframe> done."]
    page.llm.push(Script(tokens=hostile))
    page.send("Show me some markup")
    body = page.find("#log .msg:last-child .msg-body")
    assert page.value("window.pwned") is None
    assert not body.find_elements(By.CSS_SELECTOR, "img, iframe, script, [onerror]")
    assert [a.get_attribute("href") for a in body.find_elements(By.CSS_SELECTOR, "a")] == []
    assert body.find_element(By.CSS_SELECTOR, "b").text == "bold"  # an allowed inline tag
    assert "done." in body.text


def test_sentence_audio_is_scheduled_in_order_without_gaps(page: Page) -> None:
    tokens = ["[joy] ", "The", " mountain", " air", " is", " fresh", " today.", " We", " can",
              " climb", " to", " the", " old", " tower.", " Are", " you", " ready", " to",
              " go?"]
    page.llm.push(Script(tokens=tokens, delay_s=0.01))
    turn = page.send("Where shall we go?")
    assert turn["audio"] >= 3, turn
    arrived = [e["index"] for e in page.value("window.__companion.events")
               if e["event"] == "audio_ready"]
    assert len(arrived) == turn["audio"]
    page.wait(f"window.__companion.audio.scheduled.filter(e => e.turn === "
              f"window.__companion.audio.scheduled.at(-1).turn).length === {len(arrived)}",
              what="every sentence to be scheduled")
    audio = page.audio()
    scheduled = [e for e in audio["scheduled"] if e["turn"] == audio["scheduled"][-1]["turn"]]
    # Scheduled in the order the events came, which is sentence order.
    assert [e["index"] for e in scheduled] == arrived == sorted(arrived)
    assert " ".join(e["display"] for e in scheduled).replace("[joy] ", "") == \
        "".join(tokens).replace("[joy] ", "")
    for before, after in itertools.pairwise(scheduled):
        assert after["start"] >= before["end"] - 1e-9, "sentences overlap"
        if after["queued_at"] <= before["end"]:
            # It was ready before the previous sentence ended: it starts exactly then.
            assert after["start"] == pytest.approx(before["end"], abs=1e-9), "a gap"
            assert after["gap_ms"] == 0
    # While it plays, the mouth moves with the visemes and the expression is shown.
    page.wait("window.__companion.audio.speaking && window.__companion.audio.shape !== 'closed'",
              what="the mouth to move")
    assert page.value("document.querySelector('#face').dataset.speaking") == "true"
    assert page.text("#char-expression") == "joy"
    assert "is speaking" in page.text("#speaking")
    page.wait("!window.__companion.audio.speaking", within=30, what="the audio to end")
    page.wait("document.querySelector('#mouth').dataset.shape === 'closed'")


def test_stop_keeps_the_partial_reply_as_interrupted(page: Page) -> None:
    page.llm.push(Script(tokens=["I", " was", " about", " to", " say", " more"], delay_s=0.05,
                         hang_after=4))
    page.type("Tell me a long story", send=True)
    page.wait("window.__companion.state.messages.at(-1).content.includes('about')",
              what="the first words")
    page.find("#stop").click()
    page.wait("!window.__companion.state.streaming", what="the turn to stop")
    reply = page.last_reply()
    assert reply["status"] == "interrupted"
    assert reply["content"].startswith("I was about")
    assert page.text("#log .msg:last-child .msg-status") == "interrupted"
    assert page.visible("#send") and not page.visible("#stop")
    assert page.value("document.activeElement.id") == "composer-input"
    # The server saw the client go, closed the LLM request and kept the partial reply.
    wait_for(lambda: page.llm.requests[-1].closed_at is not None, what="the LLM request to close")

    def kept() -> dict[str, Any] | None:
        last = stored(page.engine, page.state["conversationId"])[-1]
        return last if last["role"] == "assistant" else None

    last = wait_for(kept, what="the partial reply to be stored")
    assert last["status"] == "interrupted"
    assert last["content"] == reply["content"]


def test_errors_show_the_servers_message(page: Page) -> None:
    page.llm.push(Script(status=500, error_message="the model fell over"))
    turn = page.send("Are you there?")
    assert turn["error"] is not None
    reply = page.last_reply()
    assert reply["status"] == "error"
    shown = page.text("#log .msg:last-child .msg-error")
    assert shown == turn["error"]["error"] and "the model fell over" in shown
    # A provider that does not answer: the message names its address.
    page.wait("document.querySelectorAll('#model-list option').length > 0", what="the models")
    page.find("#model-input").clear()
    page.find("#model-input").send_keys("ollama_chat/nothing-here")
    page.find("#model-switch").click()
    page.wait("window.__companion.state.model === 'ollama_chat/nothing-here'")
    try:
        turn = page.send("Hello?")
        assert turn["error"]["error"] == page.text("#log .msg:last-child .msg-error")
        assert "localhost:11434" in turn["error"]["error"] or \
            "127.0.0.1:11434" in turn["error"]["error"], turn["error"]
    finally:
        status, body = page.engine.request("POST", "/api/models/switch",
                                           {"new_model": "openai/test-model"})
        assert status == 200, body


def test_tts_off_sends_no_audio(page: Page) -> None:
    page.find("#tts-toggle").click()
    assert page.state["tts"] is False
    page.llm.push(Script(tokens=["Quiet", " now.", " Very", " quiet", " indeed."]))
    turn = page.send("Whisper")
    assert turn["audio"] == 0 and turn["sentences"] >= 2
    assert page.audio()["scheduled"] == []
    body = page.llm.requests[-1].body
    assert body["messages"][-1]["content"] == "Whisper"
    assert page.value("localStorage.getItem('companion.tts')") == "off"


def test_model_switch(page: Page) -> None:
    box = page.find("#model-input")
    page.wait("document.querySelectorAll('#model-list option').length > 0", what="the models")
    assert box.get_attribute("value") == "openai/test-model"
    options = page.value("[...document.querySelectorAll('#model-list option')].map(o => o.value)")
    assert "openai/other-model" in options  # listed from the provider's /v1/models
    box.clear()
    box.send_keys("openai/other-model", Keys.ENTER)
    page.wait("window.__companion.state.model === 'openai/other-model'")
    assert page.engine.request("GET", "/api/status")[1]["active_model"] == "openai/other-model"
    page.wait("document.querySelector('#toast').textContent.includes('other-model')")
    page.llm.push(Script(tokens=["Switched."]))
    page.send("Which model?")
    assert page.llm.requests[-1].body["model"] == "other-model"
    box.clear()
    box.send_keys("openai/test-model")
    page.find("#model-switch").click()
    page.wait("window.__companion.state.model === 'openai/test-model'")


# --- conversations and characters ---------------------------------------------------------


def test_conversations_are_listed_reopened_and_deleted(page: Page) -> None:
    page.llm.push(Script(tokens=["First", " answer."]))
    page.send("First question")
    first = page.state["conversationId"]
    page.wait(f"window.__companion.state.conversations.includes({json.dumps(first)})")
    page.find("#new-chat").click()
    page.wait("window.__companion.state.conversationId === null && "
              "window.__companion.state.greeting")
    assert [m["role"] for m in page.state["messages"]] == []
    assert "Hello, Traveler" in page.text("#log")
    page.click(f'#conv-list [data-conversation="{first}"] .conv-open')
    page.wait(f"window.__companion.state.conversationId === {json.dumps(first)}")
    assert [(m["role"], m["content"]) for m in page.state["messages"]] == [
        ("assistant", "*waves* Hello, Traveler! I am Aria."), ("user", "First question"),
        ("assistant", "First answer.")]
    assert page.value("location.hash") == f"#/c/{first}"
    # Reloading the page reopens it.
    page.driver.refresh()
    page.wait("window.__companion.state.ready")
    assert page.state["conversationId"] == first
    assert page.state["messages"][-1]["content"] == "First answer."
    page.click(f'#conv-list [data-conversation="{first}"] .icon-button')
    page.driver.switch_to.alert.accept()
    page.wait(f"!window.__companion.state.conversations.includes({json.dumps(first)})")
    assert page.state["conversationId"] is None
    assert page.engine.request("GET", f"/api/conversations/{first}")[0] == 404


def needs(page: Page, feature: str, route: str) -> None:
    if feature not in page.state["features"]:
        pytest.skip(f"this server has no {route} (conversation editing, issue 16)")


def test_regenerate_keeps_the_old_reply_as_a_swipe(page: Page) -> None:
    needs(page, "regenerate", "POST /api/conversations/{id}/regenerate")
    page.llm.push(Script(tokens=["First", " take."]))
    page.send("Tell me a joke")
    assert page.visible("#regenerate")
    page.llm.push(Script(tokens=["Second", " take."]))
    turns = page.state["turns"]
    page.find("#regenerate").click()
    page.wait(f"window.__companion.state.turns > {turns}", within=30, what="the new reply")
    assert page.last_reply()["content"] == "Second take."
    assert page.text("#log .msg:last-child .msg-body") == "Second take."
    last = stored(page.engine, page.state["conversationId"])[-1]
    assert (last["content"], last["swipes"], last["swipe_index"]) == (
        "Second take.", ["First take.", "Second take."], 1)
    # The old reply is one click away, on the page and then on the server.
    assert page.text("#log .msg:last-child .greeting-nav span") == "2/2"
    page.click('#log .msg:last-child [aria-label="Previous version of this reply"]')
    page.wait("window.__companion.state.messages.at(-1).content === 'First take.'")
    assert page.text("#log .msg:last-child .msg-body") == "First take."
    wait_for(lambda: stored(page.engine, page.state["conversationId"])[-1]["swipe_index"] == 0,
             what="the choice to be stored")


def test_continue_appends_to_an_interrupted_reply(page: Page) -> None:
    needs(page, "continue", "POST /api/conversations/{id}/continue")
    page.llm.push(Script(tokens=["Once", " upon", " a", " time"], delay_s=0.05, hang_after=3))
    page.type("Tell me a story", send=True)
    # Every token before the hang is on the page, so the server holds no more than it
    # showed when stop is clicked (stopping after 'upon' raced the third token).
    page.wait("window.__companion.state.messages.at(-1).content === 'Once upon a'")
    page.find("#stop").click()
    page.wait("window.__companion.state.messages.at(-1).status === 'interrupted'")
    partial = page.last_reply()["content"]
    page.wait("!document.querySelector('#continue').hidden", what="the continue button")
    wait_for(lambda: stored(page.engine, page.state["conversationId"])[-1]["status"]
             == "interrupted", what="the partial reply to be stored")
    page.llm.push(Script(tokens=[" there", " was", " a", " dragon."]))
    turns = page.state["turns"]
    page.find("#continue").click()
    page.wait(f"window.__companion.state.turns > {turns}", within=30, what="the continuation")
    reply = page.last_reply()
    assert reply["status"] == "complete"
    assert reply["content"] == partial + " there was a dragon."
    assert stored(page.engine, page.state["conversationId"])[-1]["content"] == reply["content"]
    assert not page.visible("#continue")


def test_upload_a_png_card_by_drag_and_drop_and_chat_with_it(page: Page) -> None:
    card = png_card("Nova", "Nova is a starship pilot of the outer rim.",
                    "Ready for launch, {{user}}?")
    page.find("#manage-chars").click()
    assert page.visible("#characters-view") and not page.visible("#chat-view")
    script, args = drop_file_js("#dropzone", "nova.png", "image/png", card)
    page.js(script, *args)
    try:
        page.wait("window.__companion.state.characters.includes('nova')", what="the upload")
        # The card's own picture is its avatar (fetched with the key, shown as a blob: URL).
        page.wait("document.querySelector('#manage-list [data-character=\"nova\"] img')"
                  "?.src.startsWith('blob:')", what="the avatar")
        assert "Imported Nova" in page.text("#toast")
        page.click('#manage-list [data-character="nova"] [data-action="chat"]')
        page.wait("window.__companion.state.characterId === 'nova' && "
                  "window.__companion.state.greeting")
        assert page.text("#char-name") == "Nova"
        assert page.visible("#chat-view")
        assert "Ready for launch, Traveler?" in page.text("#log")
        assert page.value("document.querySelector('#face-avatar img')?.src.startsWith('blob:')")
        page.llm.push(Script(tokens=["Engines", " are", " hot."]))
        page.send("Take us out")
        prompt = page.llm.requests[-1].body["messages"]
        assert any("Nova is a starship pilot of the outer rim." in m["content"] for m in prompt)
        assert page.last_reply()["content"] == "Engines are hot."
        assert page.find("#log .msg:last-child .msg-name").text == "Nova"
    finally:
        page.engine.request("DELETE", "/api/characters/nova")


def test_characters_create_edit_export_activate_delete(page: Page) -> None:
    page.find("#manage-chars").click()
    page.find("#create-char").click()
    assert page.value("document.activeElement.id") == "f-name"
    assert page.value("document.querySelector('#f-description').value") == ""
    page.find("#f-name").send_keys("Milo")
    page.find("#f-description").send_keys("Milo repairs clocks.")
    page.find("#f-first_mes").send_keys("Tick tock, {{user}}.")
    page.find("#f-tags").send_keys("clocks, craft")
    page.find("#card-save").click()
    page.wait("window.__companion.state.characters.includes('milo')")
    try:
        detail = page.engine.request("GET", "/api/characters/milo")[1]["data"]
        assert (detail["description"], detail["firstMessage"], detail["tags"]) == (
            "Milo repairs clocks.", "Tick tock, {{user}}.", ["clocks", "craft"])
        page.click('#manage-list [data-character="milo"] [data-action="edit"]')
        page.wait("!document.querySelector('#card-form').hidden && "
                  "document.querySelector('#f-description').value === 'Milo repairs clocks.'")
        field = page.find("#f-description")
        field.clear()
        field.send_keys("Milo repairs clocks and music boxes.")
        page.find("#card-save").click()
        wait_for(lambda: page.engine.request("GET", "/api/characters/milo")[1]["data"]
                 ["description"] == "Milo repairs clocks and music boxes.", what="the edit")
        page.click('#manage-list [data-character="milo"] [data-action="export-json"]')
        exported = wait_for(lambda: _downloaded(page.driver.companion_downloads, "milo.json"),
                            what="the JSON export")
        card = json.loads(exported.read_text("utf-8"))
        assert card["spec"] == "chara_card_v2" and card["data"]["name"] == "Milo"
        page.click('#manage-list [data-character="milo"] [data-action="export-png"]')
        png = wait_for(lambda: _downloaded(page.driver.companion_downloads, "milo.png"),
                       what="the PNG export")
        assert png.read_bytes().startswith(b"\x89PNG")
        page.click('#manage-list [data-character="milo"] [data-action="activate"]')
        page.wait("window.__companion.state.activeCharacterId === 'milo'")
        page.click('#manage-list [data-character="milo"] [data-action="delete"]')
        page.driver.switch_to.alert.accept()
        page.wait("!window.__companion.state.characters.includes('milo')")
        assert page.engine.request("GET", "/api/characters/milo")[0] == 404
    finally:
        page.engine.request("DELETE", "/api/characters/milo")
        page.engine.request("POST", "/api/characters/aria/activate")


def _downloaded(folder: Path, name: str) -> Path | None:
    path = folder / name
    return path if path.exists() and path.stat().st_size else None


# --- the profile author's panel ----------------------------------------------------------


def test_preview_lists_the_activated_lorebook_entry_and_matches_what_is_sent(page: Page) -> None:
    page.find("#toggle-panel").click()
    assert page.value("document.querySelector('#toggle-panel').getAttribute('aria-expanded')") \
        == "true"
    page.type("Is there a dragon nearby?")
    page.wait("window.__companion.state.preview?.draft === 'Is there a dragon nearby?' && "
              "[...document.querySelectorAll('#lore-list .lore-item')].some(e => "
              "e.textContent.includes('Dragons of the north'))", what="the lorebook entry")
    item = page.find("#lore-list .lore-item")
    assert item.find_element(By.CSS_SELECTOR, ".lore-key").text == "dragon"
    prompt = page.text("#prompt-list")
    assert "Dragons sleep under the northern peaks." in prompt
    assert "The river runs cold" not in prompt
    assert "tokens" in page.text("#tokens")
    assert "sentence" in page.text("#stages") and "espeak" in page.text("#stages")
    preview = page.state["preview"]
    # What the panel showed is exactly what the LLM then receives.
    page.llm.push(Script(tokens=["They", " sleep."]))
    page.find("#composer-input").send_keys(Keys.ENTER)
    page.wait("window.__companion.state.turns > 0", within=30)
    sent = page.llm.requests[-1].body["messages"]
    assert [{"role": m["role"], "content": m["content"]} for m in preview["messages"]] == sent


def test_a_broken_profile_shows_its_error_live_and_clears_after_the_fix(page: Page) -> None:
    profile = page.engine.config_file.parent / "profiles" / "default.yaml"
    good = profile.read_text("utf-8")
    page.js("window.__sameDocument = true")
    assert not page.visible("#reload-banner")
    generation = page.state["status"]["config"]["generation"]
    try:
        profile.write_text(good + "speech: [this is not a mapping\n", "utf-8")
        page.wait("!document.querySelector('#reload-banner').hidden", what="the reload error")
        error = page.text("#reload-error")
        assert "default.yaml" in error
        assert page.value("document.querySelector('#status-button').dataset.state") == "degraded"
        assert page.state["status"]["config"]["last_error"] == error
    finally:
        profile.write_text(good, "utf-8")
    page.wait("document.querySelector('#reload-banner').hidden", what="the error to clear")
    status = page.state["status"]
    assert status["config"]["last_error"] is None
    assert status["config"]["generation"] == generation + 1
    assert page.value("document.querySelector('#status-button').dataset.state") == "healthy"
    assert page.value("window.__sameDocument") is True  # no page reload was needed


# --- manners: keyboard, screen readers, small screens, themes, the API key ----------------


ACCESSIBLE_NAMES = """
  const unnamed = [];
  for (const el of document.querySelectorAll('button, input, textarea, select, a[href]')) {
    if (!el.offsetParent && el.type !== 'file') continue;  // not rendered
    const label = el.getAttribute('aria-label') || (el.labels && [...el.labels].map(
      l => l.textContent).join(' ')) || el.textContent || el.title || el.placeholder;
    if (!label || !label.trim()) unnamed.push(el.outerHTML.slice(0, 120));
  }
  return unnamed;
"""


def test_keyboard_only_and_screen_reader_labels(page: Page) -> None:
    actions = page.driver.switch_to.active_element
    actions.send_keys(Keys.TAB)
    assert page.value("document.activeElement.className") == "skip"
    page.driver.switch_to.active_element.send_keys(Keys.ENTER)
    page.wait("document.activeElement.id === 'composer-input'", what="the skip link")
    page.llm.push(Script(tokens=["Hi", " again."]))
    page.driver.switch_to.active_element.send_keys("Hello from the keyboard", Keys.ENTER)
    page.wait("window.__companion.state.turns > 0", within=30)
    assert page.last_reply()["content"] == "Hi again."
    # Every control can be reached with Tab and has a name a screen reader can say.
    assert page.value(f"(() => {{ {ACCESSIBLE_NAMES} }})()") == []
    reached = []
    for _ in range(80):  # Tab round the whole page, back to the message box
        page.driver.switch_to.active_element.send_keys(Keys.TAB)
        reached.append(page.value("document.activeElement.id"))
        if reached[-1] == "composer-input":
            break
    assert {"toggle-panel", "status-button", "new-chat", "manage-chars", "model-input",
            "tts-toggle", "send"} <= set(reached), reached
    page.js("document.querySelector('#toggle-panel').focus()")
    page.driver.switch_to.active_element.send_keys(Keys.ENTER)
    assert page.value("document.querySelector('.app').dataset.panel") == "open"
    assert page.value("document.querySelector('#log').getAttribute('aria-live')") == "polite"


def test_works_at_360_px_wide(page: Page) -> None:
    emulate(page.driver, width=360, height=740, dark=False, mobile=True)
    page.open()
    assert page.value("document.documentElement.scrollWidth") <= 360
    assert not page.visible("#nav")  # the sidebar is a drawer here
    page.find("#toggle-nav").click()
    page.wait("getComputedStyle(document.querySelector('#nav')).visibility === 'visible'")
    assert page.value("document.activeElement.closest('#nav') !== null")
    page.find('#char-list [data-character="aria"]').click()
    page.wait("getComputedStyle(document.querySelector('#nav')).visibility === 'hidden'")
    page.llm.push(Script(tokens=["Small", " screens", " work", " too."]))
    page.send("Hi from a phone")
    assert page.last_reply()["content"] == "Small screens work too."
    assert page.value("document.documentElement.scrollWidth") <= 360
    box = page.find("#composer").rect
    assert box["x"] >= 0 and box["x"] + box["width"] <= 360


def _luminance(rgb: str) -> float:
    r, g, b = (int(x) for x in rgb[rgb.index("(") + 1:].rstrip(")").split(",")[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_dark_and_light_themes_follow_the_system(page: Page) -> None:
    light = page.value("getComputedStyle(document.body).backgroundColor")
    emulate(page.driver, **DESKTOP, dark=True)
    page.wait(f"getComputedStyle(document.body).backgroundColor !== {json.dumps(light)}")
    dark = page.value("getComputedStyle(document.body).backgroundColor")
    text = page.value("getComputedStyle(document.body).color")
    assert _luminance(light) > 0.8 and _luminance(dark) < 0.2 and _luminance(text) > 0.8


def test_api_key_is_asked_once_and_kept_for_the_tab(page: Page) -> None:
    engine = page.engine
    config = engine.config_file
    original = config.read_text("utf-8")
    page.expected_console = ["401"]
    generation = engine.request("GET", "/health")[1]["config"]["generation"]
    config.write_text(yaml.safe_dump(web_config(server={"api_key": KEY})), "utf-8")
    try:
        wait_for(lambda: engine.request("GET", "/-/config")[0] == 401, what="the key to apply")
        page.driver.execute_cdp_cmd("Storage.clearDataForOrigin", {
            "origin": engine.url, "storageTypes": "local_storage,session_storage"})
        page.driver.get(engine.url + "/app")
        page.wait("document.querySelector('#key-dialog').open", what="the key dialog")
        assert page.value("document.activeElement.id") == "key-input"
        assert page.state["characters"] == []  # nothing works without it
        page.find("#key-input").send_keys("wrong-key", Keys.ENTER)
        page.wait("document.querySelector('#key-dialog').open && document.querySelector("
                  "'#key-reason').textContent.includes('not accepted')", what="a second ask")
        page.find("#key-input").send_keys(KEY, Keys.ENTER)
        page.wait("window.__companion.state.ready", what="the app to start with the key")
        assert page.state["characters"] == ["aria"]
        assert page.value("sessionStorage.getItem('companion.apiKey')") == KEY
        asked = page.state["keyPrompts"]
        assert asked == 2  # once, and once more for the wrong key
        page.driver.refresh()  # same tab: the key is kept, nothing is asked
        page.wait("window.__companion.state.ready")
        assert page.state["keyPrompts"] == 0 and page.state["characters"] == ["aria"]
        page.llm.push(Script(tokens=["Locked", " and", " loaded."]))
        assert page.send("Knock knock")["error"] is None
    finally:
        config.write_text(original, "utf-8")
        wait_for(lambda: engine.request("GET", "/-/config")[0] == 200, what="the key to go")
        wait_for(lambda: engine.request("GET", "/health")[1]["config"]["generation"]
                 >= generation + 2, what="the reload")
