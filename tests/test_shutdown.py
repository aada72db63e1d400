"""Stopping ``companion serve`` while a turn streams: graceful, bounded, and forced on demand.

Real processes: the CLI as a user runs it, the scripted LLM in a thread of this process,
an SSE client here. A stopped turn's partial reply must be in the store afterwards
(read back by a second start over the same SQLite file).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from companion_engine.configload import load_config
from companion_engine.errors import ConfigError
from companion_engine.testing import Script, write_project
from tests.process_helpers import ServeProcess, ThreadedLLM, get_json

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def llm() -> Iterator[ThreadedLLM]:
    server = ThreadedLLM().start()
    yield server
    server.stop()


def project(root: Path, llm: ThreadedLLM, grace_s: float) -> Path:
    write_project(root, {"llm": {"model": "openai/test-model", "api_base": llm.openai_base,
                                 "timeout_s": 30}},
                  {"server": {"shutdown_grace_s": grace_s}})
    return root


class Stream:
    """One ``/api/chat/stream`` read on a thread: its events, and when it saw content."""

    def __init__(self, url: str, conversation_id: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.first_content = threading.Event()
        self.error: BaseException | None = None
        body = json.dumps({"message": "Tell me a story", "conversation_id": conversation_id})
        self._req = urllib.request.Request(url + "/api/chat/stream", data=body.encode(),
                                           headers={"Content-Type": "application/json"})
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event = ""
        try:
            with urllib.request.urlopen(self._req, timeout=60) as resp:
                for raw in resp:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        self.events.append((event, json.loads(line[6:])))
                        if event == "content":
                            self.first_content.set()
        except Exception as exc:  # the server went away mid-stream
            self.error = exc
        finally:
            self.first_content.set()

    def join(self, timeout: float = 30) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream never ended"

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


def stored_reply(root: Path, conversation_id: str) -> dict[str, Any]:
    """The conversation's last message, as a fresh start over the same store reads it."""
    proc = ServeProcess(root, name="reread").start()
    try:
        conversation = get_json(f"{proc.url}/api/conversations/{conversation_id}")
    finally:
        proc.stop()
    return conversation["data"]["messages"][-1]


def wait_exit(proc: ServeProcess, timeout: float) -> int:
    assert proc.proc is not None
    try:
        return proc.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"companion serve did not exit:\n{proc.tail()}") from None


def test_a_turn_in_progress_finishes_when_the_server_is_stopped(
        tmp_path: Path, llm: ThreadedLLM) -> None:
    root = project(tmp_path, llm, grace_s=60)
    proc = ServeProcess(root).start()
    llm.push(Script(tokens=["Once", " upon", " a", " time", " there", " was", " a", " fox",
                            "."], delay_s=0.15))
    stream = Stream(proc.url, "graceful")
    assert stream.first_content.wait(30)
    proc.signal(signal.SIGTERM)
    stream.join()
    assert wait_exit(proc, 30) == 0
    assert stream.names()[-1] == "done", stream.events
    assert stream.events[-1][1]["full_content"] == "Once upon a time there was a fox."
    assert "get up to 60 s to finish" in proc.tail()
    reply = stored_reply(root, "graceful")
    assert (reply["content"], reply["status"]) == ("Once upon a time there was a fox.",
                                                   "complete")


def stop_mid_turn(root: Path, llm: ThreadedLLM, first: str, conversation_id: str
                  ) -> tuple[ServeProcess, Stream]:
    """A server streaming a turn far longer than any test waits for, sent SIGTERM once
    its first words arrived."""
    proc = ServeProcess(root).start()
    llm.push(Script(tokens=[first] + [" and"] * 2000, delay_s=0.1))
    stream = Stream(proc.url, conversation_id)
    assert stream.first_content.wait(30)
    proc.signal(signal.SIGTERM)
    return proc, stream


def assert_interrupted(root: Path, stream: Stream, conversation_id: str, start: str) -> None:
    """The client got no ``done`` and the store kept the partial reply as interrupted."""
    stream.join()
    assert "done" not in stream.names()
    reply = stored_reply(root, conversation_id)
    assert reply["status"] == "interrupted"
    assert reply["content"].startswith(start)


def test_a_second_signal_stops_a_turn_at_once_and_keeps_its_partial_reply(
        tmp_path: Path, llm: ThreadedLLM) -> None:
    # Only the second signal can end this turn within the test's patience.
    proc, stream = stop_mid_turn(project(tmp_path, llm, grace_s=600), llm, "Long", "forced")
    assert proc.proc is not None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.proc.wait(1.0)  # the first signal waits for the turn
    proc.signal(signal.SIGTERM)
    assert wait_exit(proc, 30) == 0
    assert "second signal: closing every connection" in proc.tail()
    assert_interrupted(proc.root, stream, "forced", "Long and")


def test_the_grace_period_ends_a_turn_that_outlasts_it(
        tmp_path: Path, llm: ThreadedLLM) -> None:
    proc, stream = stop_mid_turn(project(tmp_path, llm, grace_s=0.5), llm, "Slow", "bounded")
    assert wait_exit(proc, 60) == 0
    assert_interrupted(proc.root, stream, "bounded", "Slow and")


@pytest.mark.parametrize("value", [-1, 3601, "soon", [10], None, float("nan")])
def test_a_bad_grace_period_is_a_config_error(tmp_path: Path, value: object) -> None:
    file = write_project(tmp_path, None, {"server": {"shutdown_grace_s": value}})
    with pytest.raises(ConfigError, match="shutdown_grace_s"):
        load_config(file, env={})
