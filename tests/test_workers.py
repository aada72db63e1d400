"""``server.workers``: one ``companion serve``, two worker processes on one port, SQLite.

Real processes end to end: the supervisor, its workers (SO_REUSEPORT), the scripted
LLM server in a thread of this process, the client here. Requests go over fresh
connections so the kernel spreads them over both workers.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from companion_engine.configload import load_config
from companion_engine.errors import ConfigError
from companion_engine.testing import write_project
from tests.process_helpers import ServeProcess, ThreadedLLM, get_json, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def llm() -> Iterator[ThreadedLLM]:
    server = ThreadedLLM().start()
    yield server
    server.stop()


def get(url: str) -> tuple[int, Any]:
    """(the worker that answered, the JSON body), over a fresh connection."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return int(resp.headers["X-Companion-Worker"]), json.loads(resp.read())


def per_worker(url: str, path: str, tries: int = 40) -> dict[int, Any]:
    """``path`` as each worker answers it."""
    seen: dict[int, Any] = {}
    for _ in range(tries):
        worker, body = get(url + path)
        seen.setdefault(worker, body)
        if len(seen) == 2:
            break
    return seen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, llm: ThreadedLLM) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("workers")
    write_project(root, {"llm": {"model": "openai/test-model", "api_base": llm.openai_base,
                                 "timeout_s": 10}},
                  {"server": {"workers": 2}, "reload": True})
    proc = ServeProcess(root).start()
    try:
        wait_until(lambda: len(per_worker(proc.url, "/health")) == 2, timeout=60)
        yield proc
    finally:
        proc.stop()


def post(url: str, body: Any = None, method: str = "POST") -> tuple[int, Any, int]:
    """(status, JSON body, the worker that answered)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return (resp.status, json.loads(resp.read()),
                    int(resp.headers["X-Companion-Worker"]))
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), int(exc.headers["X-Companion-Worker"])


def everyone_says(url: str, path: str, check: Any, rounds: int = 20) -> bool:
    """``check(body)`` holds for ``rounds`` answers in a row, from both workers."""
    seen = set()
    for _ in range(rounds):
        worker, body = get(url + path)
        if not check(body):
            return False
        seen.add(worker)
    return seen == {0, 1}


def test_workers_share_one_port_and_say_who_answered(cluster: ServeProcess) -> None:
    seen = per_worker(cluster.url, "/health")
    assert set(seen) == {0, 1}
    assert seen[0]["worker"]["pid"] != seen[1]["worker"]["pid"]
    assert all(h["worker"]["workers"] == 2 for h in seen.values())
    assert all(h["shared"] == {"backend": "local", "connected": True, "limits": "process"}
               for h in seen.values())


def test_model_switch_on_one_worker_is_used_by_all(cluster: ServeProcess) -> None:
    status, body, _ = post(cluster.url + "/api/models/switch",
                           {"new_model": "openai/other-model"})
    assert status == 200, body
    assert everyone_says(cluster.url, "/api/status",
                         lambda b: b["active_model"] == "openai/other-model")
    assert post(cluster.url + "/api/models/switch", {"new_model": "openai/test-model"})[0] == 200
    assert everyone_says(cluster.url, "/api/status",
                         lambda b: b["active_model"] == "openai/test-model")


def test_a_card_created_on_one_worker_is_listed_and_activated_on_all(
        cluster: ServeProcess) -> None:
    status, body, _ = post(cluster.url + "/api/characters",
                        {"name": "Wanda", "description": "d", "first_mes": "Hi!"})
    assert status == 200, body
    cid = body["data"]["id"]
    assert everyone_says(cluster.url, "/api/characters",
                         lambda b: cid in [c["id"] for c in b["data"]])
    assert post(cluster.url + f"/api/characters/{cid}/activate")[0] == 200
    assert everyone_says(cluster.url, "/api/status", lambda b: b["character"] == cid)
    assert post(cluster.url + f"/api/characters/{cid}", method="DELETE")[0] == 200
    assert everyone_says(cluster.url, "/api/characters",
                         lambda b: cid not in [c["id"] for c in b["data"]])


def test_a_conversation_continues_across_workers(cluster: ServeProcess) -> None:
    # At least 8 turns, and on until both workers have answered: the kernel spreads
    # connections by a hash, so 8 in a row on one worker happen now and then (1 in 128).
    answered: list[int] = []
    while len(answered) < 8 or set(answered) != {0, 1}:
        assert len(answered) < 40, f"one worker answered every turn: {answered}"
        n = len(answered)
        status, body, worker = post(cluster.url + "/api/chat",
                                    {"message": f"turn {n}", "conversation_id": "across"})
        assert status == 200, body
        answered.append(worker)
    body = get_json(cluster.url + "/api/conversations/across")
    users = [m["content"] for m in body["data"]["messages"] if m["role"] == "user"]
    assert users == [f"turn {i}" for i in range(len(answered))]
    assert len(body["data"]["messages"]) == 2 * len(answered)


def test_metrics_sum_every_worker(cluster: ServeProcess) -> None:
    """Multi-process mode: whichever worker answers reports the turns of both."""
    def completed(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('companion_turns_total{status="complete"}'):
                return float(line.split()[-1])
        return 0.0

    seen = {}
    for _ in range(40):
        with urllib.request.urlopen(cluster.url + "/metrics", timeout=10) as resp:
            seen[resp.headers["X-Companion-Worker"]] = completed(resp.read().decode())
        if len(seen) == 2:
            break
    assert set(seen) == {"0", "1"}
    assert seen["0"] == seen["1"] >= 8  # the conversation test's turns, on both workers


def _generations(url: str) -> dict[int, int]:
    return {i: h["config"]["generation"] for i, h in per_worker(url, "/health").items()}


def test_post_reload_reaches_every_worker(cluster: ServeProcess) -> None:
    before = _generations(cluster.url)
    status, body, _ = post(cluster.url + "/-/reload")
    assert status == 200 and body["broadcast"] == 1
    wait_until(lambda: all(g > before[i] for i, g in _generations(cluster.url).items()))


def test_sighup_reloads_every_worker(cluster: ServeProcess) -> None:
    before = _generations(cluster.url)
    cluster.signal(signal.SIGHUP)
    wait_until(lambda: all(g > before[i] for i, g in _generations(cluster.url).items()))


def test_a_profile_edit_reloads_every_worker(cluster: ServeProcess) -> None:
    profile = cluster.root / "profiles" / "default.yaml"
    profile.write_text(profile.read_text().replace("timeout_s: 10", "timeout_s: 10\n  "
                                                   "temperature: 0.33"))
    wait_until(lambda: all(s["configuration"]["temperature"] == 0.33
                           for s in per_worker(cluster.url, "/api/status").values()))


def test_a_killed_worker_is_restarted(cluster: ServeProcess) -> None:
    old = {i: h["worker"]["pid"] for i, h in per_worker(cluster.url, "/health").items()}
    os.kill(old[1], signal.SIGKILL)

    def replaced() -> bool:
        try:
            now = {i: h["worker"]["pid"] for i, h in per_worker(cluster.url, "/health").items()}
        except OSError:  # a connection the dead worker had accepted
            return False
        return now.get(0) == old[0] and now.get(1) not in (None, old[1])

    wait_until(replaced, timeout=60)
    assert "worker 1" in cluster.tail(80) and "restarting" in cluster.tail(80)


def test_sigterm_stops_the_supervisor_and_every_worker(cluster: ServeProcess) -> None:
    pids = [h["worker"]["pid"] for h in per_worker(cluster.url, "/health").values()]
    assert cluster.stop() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    time.sleep(0.1)
    with pytest.raises(OSError):
        get_json(cluster.url + "/health", timeout=2)


@pytest.mark.parametrize("value", [0, -1, 300, "many", 2.5, [2]])
def test_bad_worker_counts_are_config_errors(tmp_path: Path, value: object) -> None:
    file = write_project(tmp_path, None, {"server": {"workers": value}})
    with pytest.raises(ConfigError, match="workers"):
        load_config(file, env={})


def test_auto_is_one_worker_per_usable_core(tmp_path: Path) -> None:
    config = load_config(write_project(tmp_path, None, {"server": {"workers": "auto"}}),
                         env={})
    assert config.server.worker_count() == len(os.sched_getaffinity(0))


def test_workers_refuse_a_store_they_cannot_share(tmp_path: Path) -> None:
    import subprocess
    import sys

    file = write_project(tmp_path, None, {"server": {"workers": 2},
                                          "store": {"url": "sqlite:///:memory:"}})
    out = subprocess.run([sys.executable, "-m", "companion_engine", "serve", "--config",
                          str(file), "--port", "0"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COMPANION_LOAD_PLUGINS": ""})
    assert out.returncode == 1
    assert "in-memory" in out.stderr
