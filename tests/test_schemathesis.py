"""Schemathesis' every check against a live ``companion serve``, with an API key and without.

The CLI (``st run``) runs as a user runs it, in its own process, against a real
``companion serve`` in another, whose LLM is the scripted server in this one and
whose voice is espeak-ng. With every check on (schemathesis' default, as
``--checks all``) each generated request must get a documented status, content
type, headers and body; no 5xx; schema-valid requests accepted, invalid ones
refused; the key required where the document says, and nowhere else.

- With the key: every phase. Coverage (the boundaries and each way to break the
  document, deterministically), a few random cases (fuzzing), and stateful
  sequences through the links schemathesis infers (a character created, then
  read, updated, chatted with...).
- Without a key (loopback): more random cases, and stateful. What the config
  changes is security, and those phases check it: no security requirement, no 401.

``tests/schemathesis.toml`` lists what is not checked and why, and
``tests/schemathesis_hooks.py`` what the test adjusts in a request (rules JSON
Schema cannot say; no provider past loopback). ``COMPANION_SCHEMATHESIS_EXAMPLES``
and ``COMPANION_SCHEMATHESIS_SEED`` change the fuzzing budget and the seed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from companion_engine.testing import Script
from companion_engine.testing.project import write_project
from tests.process_helpers import ServeProcess, ThreadedLLM, get_json

REPO = Path(__file__).resolve().parents[1]
KEY = "schemathesis-key-0123456789abcdef"
MODEL = "openai/test-model"
#: Cases per operation in the fuzzing phase (the coverage phase makes its own).
EXAMPLES = int(os.environ.get("COMPANION_SCHEMATHESIS_EXAMPLES", "4"))
SEED = os.environ.get("COMPANION_SCHEMATHESIS_SEED", "20261201")
#: (phases, fuzzing cases per operation, key) of each run. With the key, the coverage
#: phase's thousands of boundary cases (every request must pass them) and a few random
#: ones; without it, the random ones: within about a minute for both on two cores.
#: ``COMPANION_SCHEMATHESIS_EXAMPLES`` gives both runs that many random cases.
RUNS = {"api-key": ("examples,coverage,fuzzing,stateful",
                    int(os.environ.get("COMPANION_SCHEMATHESIS_EXAMPLES", "2")), KEY),
        "no-key": ("fuzzing,stateful", EXAMPLES, None)}


@pytest.fixture(scope="module")
def llm() -> Iterator[ThreadedLLM]:
    server = ThreadedLLM().start()
    server.set_default(Script(tokens=["Hello", " there", ". ", "How", " are", " you?"]))
    yield server
    server.stop()


def serve(root: Path, llm: ThreadedLLM, key: str | None) -> ServeProcess:
    config = {"rate_limit": {"requests": 100_000, "window_s": 1}}
    if key:
        config["server"] = {"api_key": key}
    write_project(root, {"llm": {"model": MODEL, "api_base": llm.openai_base, "timeout_s": 5},
                         "speech": {"enabled": True, "tts": "espeak"}}, config)
    return ServeProcess(root).start()


def st_command() -> list[str]:
    script = Path(sys.executable).with_name("st")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]


def failures(output: str) -> str:
    """The failures section of schemathesis' report (all of it when there is none)."""
    start = output.find("FAILURES")
    return output[start:] if start >= 0 else output[-6000:]


@pytest.mark.parametrize("run", list(RUNS))
def test_the_server_is_what_its_openapi_document_says(
        run: str, llm: ThreadedLLM, tmp_path: Path) -> None:
    phases, examples, key = RUNS[run]
    server = serve(tmp_path / "project", llm, key)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        # The document asks LiteLLM for its providers: the first request imports it.
        spec_url = f"{server.url}/openapi.json"
        spec = get_json(spec_url, timeout=60)
        documented = sum(len(ops) for ops in spec["paths"].values())
        endless = sum(1 for ops in spec["paths"].values() for op in ops.values()
                      if op.get("x-endless"))
        auth = ["-H", f"Authorization: {headers['Authorization']}"] if headers else []
        env = {**os.environ, "PYTHONPATH": str(REPO), "COMPANION_TEST_MODEL": MODEL,
               "COMPANION_TEST_AUTH": headers.get("Authorization", "")}
        done = subprocess.run(
            [*st_command(), "--config-file", str(REPO / "tests" / "schemathesis.toml"), "run",
             spec_url, *auth, "--phases", phases, "--max-examples", str(examples),
             "--seed", SEED, "--workers", "1", "--request-timeout", "30",
             "--report-dir", str(tmp_path / "report")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    finally:
        server.stop()
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"schemathesis found problems:\n{failures(out)}\n" \
                                 f"server log:\n{server.tail(20)}"
    generated = re.search(r"(\d+) generated", out)
    tested = re.search(r"Tested:\s+(\d+)", out)
    assert generated and tested, out[-3000:]
    assert int(generated.group(1)) > 100, out[-3000:]  # a run that sent nothing is no pass
    # all but the WebSocket and the endless streams (excluded) and the document itself
    # (schemathesis leaves it out)
    assert int(tested.group(1)) == documented - 2 - endless, out[-3000:]
    print(f"{run}: {generated.group(1)} cases over {tested.group(1)} operations")
