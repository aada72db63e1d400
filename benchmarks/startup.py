"""Time from `companion serve` to the first answered /health, against a bare aiohttp server.

The goal: /health answers within 1.5 s of start (LiteLLM's ~3 s import happens in the
background). The baseline is the least any aiohttp server can do: a one-route app started by
a fresh interpreter, measured the same way in the same run.

    python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BARE = """
import sys
from aiohttp import web
async def health(request):
    return web.json_response({"status": "healthy"})
app = web.Application()
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_health(cmd: list[str], port: int, cwd: Path) -> float:
    env = {**os.environ, "COMPANION_LOAD_PLUGINS": ""}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd} exited with {proc.returncode}") from None
                time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "profiles").mkdir()
        # The shipped default profile (espeak voice, the full prompt pipeline).
        (root / "profiles" / "default.yaml").write_text(
            (repo / "profiles" / "default.yaml").read_text())
        (root / "companion.yaml").write_text("reload: false\n")
        (root / "bare.py").write_text(BARE)
        engine, bare = [], []
        for _ in range(args.runs):
            port = free_port()
            bare.append(time_to_health([sys.executable, "bare.py", str(port)], port, root))
            port = free_port()
            engine.append(time_to_health(
                [sys.executable, "-m", "companion_engine", "serve", "--port", str(port),
                 "--no-reload"], port, root))
    e, b = statistics.median(engine), statistics.median(bare)
    print(f"companion serve -> /health: median {e * 1000:.0f} ms, max {max(engine) * 1000:.0f} ms"
          f" over {args.runs} runs (goal: < 1500 ms)")
    print(f"bare aiohttp    -> /health: median {b * 1000:.0f} ms")
    print(f"ratio engine/bare: {e / b:.2f}x")


if __name__ == "__main__":
    main()
