"""Hot reload latency: from saving a profile to the first request served by the new pipeline.

A real ``companion serve`` (the shipped default profile, file watcher on) runs over a temp
folder. Each round saves ``profiles/default.yaml`` the way editors do (temp file + rename)
with a new ``llm.temperature``, then polls ``GET /api/status`` until it reports the new
value; then the same for saving a local plugin file (polling the config generation). The
goal is under 300 ms. Baselines measured in the same run: one ``GET
/api/status`` round trip (the polling resolution) and one ``POST /-/reload`` (rebuild and
swap without the watcher), so the ratio shows what the watcher and debounce add.

    python benchmarks/reload_latency.py [--saves 30] [--profile PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def with_temperature(profile: str, value: float) -> str:
    text, n = re.subn(r"(?m)^(\s+temperature:\s*)[0-9.]+", rf"\g<1>{value}", profile)
    if n != 1:
        raise SystemExit("the profile needs exactly one `temperature:` line under llm")
    return text


def summary(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = statistics.quantiles(ms, n=20, method="inclusive")[18] if len(ms) >= 2 else ms[0]
    return (f"{name}: median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, "
            f"max {ms[-1]:.1f} ms (n={len(ms)})")


async def wait_up(session: aiohttp.ClientSession, url: str,
                  proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            async with session.get(url + "/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit("server did not start")


async def generation(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/-/config") as resp:
        return int((await resp.json())["generation"])


async def temperature(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/api/status") as resp:
        return float((await resp.json())["configuration"]["temperature"])


def make_folder(root: Path, profile_src: Path) -> str:
    """A config folder with the profile, the shipped characters and the watcher on."""
    (root / "profiles").mkdir()
    (root / "plugins").mkdir()
    shutil.copytree(REPO / "characters", root / "characters")
    profile = profile_src.read_text(encoding="utf-8")
    (root / "profiles" / "default.yaml").write_text(with_temperature(profile, 0.5),
                                                    encoding="utf-8")
    (root / "companion.yaml").write_text("reload: true\n", encoding="utf-8")
    return profile


async def run(root: Path, profile: str, saves: int) -> dict[str, list[float]]:
    profile_file = root / "profiles" / "default.yaml"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "COMPANION_LOAD_PLUGINS": "", "LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "companion_engine", "serve", "--port", str(port), cwd=root,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_up(session, url, proc)
            await asyncio.sleep(0.5)  # let start-up work (LiteLLM import) settle

            status_rtt = []
            for _ in range(50):
                t0 = time.perf_counter()
                await temperature(session, url)
                status_rtt.append(time.perf_counter() - t0)

            latencies = []
            for i in range(saves):
                value = round(0.6 + i * 0.01, 2)
                save(profile_file, with_temperature(profile, value))
                t0 = time.perf_counter()
                while await temperature(session, url) != value:
                    if time.perf_counter() - t0 > 10:
                        raise SystemExit(f"save {i} never applied")
                    await asyncio.sleep(0.002)
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.25)  # separate saves, as a person would

            # A local plugin edit re-imports every plugins/*.py file before the rebuild.
            plugin_file = root / "plugins" / "bench_plugin.py"
            plugin_latencies = []
            for i in range(saves):
                before = await generation(session, url)
                save(plugin_file, f"VERSION = {i}\n")
                t0 = time.perf_counter()
                while await generation(session, url) == before:
                    if time.perf_counter() - t0 > 10:
                        raise SystemExit(f"plugin save {i} never applied")
                    await asyncio.sleep(0.002)
                plugin_latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.25)

            manual = []
            for _ in range(saves):
                t0 = time.perf_counter()
                async with session.post(url + "/-/reload") as resp:
                    assert resp.status == 200, await resp.text()
                manual.append(time.perf_counter() - t0)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    return {"save": latencies, "plugin": plugin_latencies, "manual": manual,
            "status": status_rtt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=30)
    parser.add_argument("--profile", type=Path, default=REPO / "profiles" / "default.yaml",
                        help="profile to serve (default: the shipped profiles/default.yaml)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        profile = make_folder(Path(tmp), args.profile)
        times = asyncio.run(run(Path(tmp), profile, args.saves))
    print(f"profile: {args.profile}")
    print(summary("file save -> new pipeline serving", times["save"]) + "  (goal: < 300 ms)")
    print(summary("plugin file save -> new pipeline serving", times["plugin"]))
    print(summary("baseline POST /-/reload (rebuild + swap)", times["manual"]))
    print(summary("baseline GET /api/status round trip", times["status"]))
    ratio = statistics.median(times["save"]) / statistics.median(times["manual"])
    print(f"ratio save->serving / POST reload (median): {ratio:.2f}x")


if __name__ == "__main__":
    main()
