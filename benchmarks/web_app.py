"""The web app as a browser sees it: first paint, page weight, layout shift while a reply
streams, and how fast a broken profile edit shows on the page.

Three processes, as users run it: ``companion serve`` (the default pipeline, espeak on),
the scripted LLM server (``companion_engine.testing``) in a second process streaming a
roleplay reply at ``--rate`` tokens/s, and headless Chromium as the client. Measured in
the browser with the Performance API:

- first paint / first contentful paint of ``/app`` on a cold cache (and warm: the
  hashed files come from the cache, the page is revalidated with a 304); baselines in
  the same run: ``/`` (a JSON document the browser shows as text) and ``/docs`` (the
  Swagger UI page the engine also serves);
- page weight: bytes on the wire (``transferSize``, headers included) and compressed
  bodies (``encodedBodySize``) of the page and its files, and with the API calls of
  the first screen;
- cumulative layout shift while a reply streams in (``layout-shift`` entries from the
  moment the reply starts to the end of the turn, with and without the 500 ms after
  the key press that browsers exclude);
- reload to page: from writing a broken ``profiles/default.yaml`` to the error banner
  showing (the watcher's debounce included), and back after the fix.

The engine's CPU time (``/proc/PID/stat``) is printed next to the wall time.

    .venv/bin/python benchmarks/web_app.py [--runs 7] [--rate 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from companion_engine.testing import free_port  # noqa: E402
from tests.web_helpers import (  # noqa: E402
    EngineProcess,
    start_browser,
    stop_browser,
    wait_for,
    write_web_project,
)

REPLY = ("*pulls her cloak tighter against the wind and looks toward the ridge* \"The "
         "northern pass is closed this time of year, Traveler. Snow came early, and the "
         "old bridge gave way in the last storm.\" *she kneels and draws a map in the "
         "dust with a stick* \"But there is another way. We follow the river east, past "
         "the mill, then climb the goat path to the **Watcher's Stone**. It is steep, "
         "and slow, but the dragons never go there.\" [joy] \"Shall we leave at dawn?\"")


# --- the LLM server process ---------------------------------------------------------------


def serve_llm(port: int, rate: float) -> None:
    """Run the scripted LLM server until killed (the ``--llm-server`` mode)."""
    from companion_engine.testing import LLMTestServer, Script

    words = REPLY.split(" ")
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]

    async def main() -> None:
        server = await LLMTestServer.start(port)
        server.default = Script(tokens=tokens, delay_s=1 / rate)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def cpu_ms(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


# --- in the browser ---------------------------------------------------------------------------

PAINT = """
  const nav = performance.getEntriesByType('navigation')[0];
  const paint = Object.fromEntries(
    performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
  const resources = performance.getEntriesByType('resource');
  const files = resources.filter(r => new URL(r.name).pathname.startsWith('/app/assets/') ||
                                      new URL(r.name).pathname.startsWith('/docs/'));
  const sum = (list, key) => list.reduce((n, r) => n + (r[key] || 0), 0);
  return {
    first_paint: paint['first-paint'] ?? null,
    fcp: paint['first-contentful-paint'] ?? null,
    response_end: nav.responseEnd,
    dom_content_loaded: nav.domContentLoadedEventEnd,
    load: nav.loadEventEnd,
    files: files.length,
    transfer: nav.transferSize + sum(files, 'transferSize'),
    encoded: nav.encodedBodySize + sum(files, 'encodedBodySize'),
    decoded: nav.decodedBodySize + sum(files, 'decodedBodySize'),
    transfer_all: nav.transferSize + sum(resources, 'transferSize'),
    cached_files: files.filter(r => r.transferSize === 0).length,
  };
"""

WATCH_SHIFTS = """
  window.__shifts = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__shifts.push({
      at: e.startTime, value: e.value, recent: e.hadRecentInput,
      sources: e.sources.map(s => s.node?.id || s.node?.className || s.node?.nodeName || '?')});
  }).observe({type: 'layout-shift', buffered: true});
"""

BANNER = """
  window.__bannerAt = [];
  new MutationObserver(() => {
    const hidden = document.querySelector('#reload-banner').hidden;
    window.__bannerAt.push({hidden, at: performance.timeOrigin + performance.now()});
  }).observe(document.querySelector('#reload-banner'), {attributes: true});
"""


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def load(driver: Any, url: str, *, cold: bool, ready: bool) -> dict[str, Any]:
    if cold:
        driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    driver.get("about:blank")
    driver.get(url)
    if ready:
        wait_for(lambda: js(driver, "return window.__companion && window.__companion.state.ready"),
                 20, "the app")
        # The first screen's API calls are in by now.
    wait_for(lambda: js(driver, "return document.readyState === 'complete' && "
                                "performance.getEntriesByType('paint').length > 0"), 10, "paint")
    return js(driver, PAINT)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def row(name: str, values: list[float], unit: str = "ms") -> str:
    return (f"| {name} | {median(values):.0f} {unit} | {min(values):.0f} | {max(values):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rate", type=float, default=30.0, help="LLM tokens per second")
    parser.add_argument("--profile", type=Path, help="record the engine with py-spy into "
                        "this file (collapsed stacks) and print its top functions")
    parser.add_argument("--llm-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llm_server:
        serve_llm(args.llm_server, args.rate)
        return

    llm_port = free_port()
    llm = subprocess.Popen([sys.executable, __file__, "--llm-server", str(llm_port),
                            "--rate", str(args.rate)], stdout=subprocess.PIPE, text=True)
    assert llm.stdout is not None and llm.stdout.readline().strip() == "ready"
    root = Path(tempfile.mkdtemp(prefix="companion-web-bench-"))
    config = write_web_project(root, f"http://127.0.0.1:{llm_port}/v1")
    engine = EngineProcess(config)
    driver = start_browser(1280, 800)
    spy = None
    if args.profile:
        spy = subprocess.Popen(["py-spy", "record", "--threads", "--full-filenames", "--format",
                                "raw", "-o", str(args.profile), "-p", str(engine.proc.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The first turn of a process waits for LiteLLM's import; not what this measures.
        engine.request("POST", "/api/chat", {"messages": [{"role": "user", "content": "hi"}],
                                              "enable_tts": False}, timeout=120)
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in (
            "app_cold", "app_warm", "root", "docs")}
        cpu: dict[str, list[float]] = {k: [] for k in results}
        for _ in range(args.runs):
            for key, url, cold, ready in (
                    ("root", engine.url + "/", True, False),
                    ("docs", engine.url + "/docs", True, False),
                    ("app_cold", engine.url + "/app", True, True),
                    ("app_warm", engine.url + "/app", False, True)):
                before = cpu_ms(engine.proc.pid)
                results[key].append(load(driver, url, cold=cold, ready=ready))
                cpu[key].append(cpu_ms(engine.proc.pid) - before)

        print(f"# web app: {args.runs} runs, reply streamed at {args.rate:g} tokens/s\n")
        print("| page | first paint (median) | min | max |")
        print("| --- | --- | --- | --- |")
        for key, label in (("app_cold", "`/app`, cold cache"), ("app_warm", "`/app`, warm cache"),
                           ("root", "baseline: `/` (JSON as text)"),
                           ("docs", "baseline: `/docs` (Swagger UI), cold")):
            print(row(label, [r["first_paint"] for r in results[key]]))
        print()
        print("| page | FCP | DOMContentLoaded | app ready / load | engine CPU |")
        print("| --- | --- | --- | --- | --- |")
        for key in results:
            rs = results[key]
            print(f"| {key} | {median([r['fcp'] for r in rs]):.0f} ms | "
                  f"{median([r['dom_content_loaded'] for r in rs]):.0f} ms | "
                  f"{median([r['load'] for r in rs]):.0f} ms | {median(cpu[key]):.1f} ms |")
        cold = results["app_cold"][-1]
        warm = results["app_warm"][-1]
        docs = results["docs"][-1]
        print()
        print("| weight | on the wire | compressed bodies | uncompressed | files |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| `/app` page + files, cold | {cold['transfer'] / 1024:.1f} KB | "
              f"{cold['encoded'] / 1024:.1f} KB | {cold['decoded'] / 1024:.1f} KB | "
              f"{cold['files']} |")
        print(f"| ... with the first screen's API calls | {cold['transfer_all'] / 1024:.1f} KB "
              "| | | |")
        print(f"| `/app` warm (304 + cache) | {warm['transfer'] / 1024:.1f} KB | | | "
              f"{warm['cached_files']} of {warm['files']} from cache |")
        print(f"| baseline: `/docs` | {docs['transfer'] / 1024:.1f} KB | "
              f"{docs['encoded'] / 1024:.1f} KB | {docs['decoded'] / 1024:.1f} KB | "
              f"{docs['files']} |")

        # Layout shift while replies stream in: from the key press to a second after the
        # turn ended (the conversation list refreshes then), and at load for comparison.
        load_cls, stream_all, stream_late, durations, turn_cpu = [], [], [], [], []
        for _ in range(max(3, args.runs // 2)):
            driver.get(engine.url + "/app")
            wait_for(lambda: js(driver, "return window.__companion.state.ready"), 20, "app")
            js(driver, WATCH_SHIFTS)
            time.sleep(0.3)
            turns = js(driver, "return window.__companion.state.turns")
            box = driver.find_element("id", "composer-input")
            box.send_keys("Which way to the pass?")
            sent_at = js(driver, "return performance.now()")
            before = cpu_ms(engine.proc.pid)
            box.send_keys("\n")
            started = time.perf_counter()
            wait_for(lambda t=turns: js(driver, "return window.__companion.state.turns") > t,
                     60, "the reply")
            durations.append((time.perf_counter() - started) * 1000)
            turn_cpu.append(cpu_ms(engine.proc.pid) - before)
            time.sleep(1.0)
            shifts = js(driver, "return window.__shifts")
            during = [x for x in shifts if x["at"] >= sent_at]
            load_cls.append(sum(x["value"] for x in shifts if x["at"] < sent_at))
            stream_all.append(sum(x["value"] for x in during))
            stream_late.append(sum(x["value"] for x in during if not x["recent"]))
            if during:
                print("layout shifts while streaming:", json.dumps(during)[:600])
        print()
        print("| layout shift (CLS) | median | max |")
        print("| --- | --- | --- |")
        print(f"| while a reply streams, every shift | {median(stream_all):.4f} | "
              f"{max(stream_all):.4f} |")
        print(f"| while a reply streams, excluding 500 ms after input | "
              f"{median(stream_late):.4f} | {max(stream_late):.4f} |")
        print(f"| loading the page (lists filling in) | {median(load_cls):.4f} | "
              f"{max(load_cls):.4f} |")
        print(f"| turn wall time ({len(REPLY.split())} words) | {median(durations):.0f} ms | "
              f"{max(durations):.0f} ms |")
        print(f"| engine CPU per turn (espeak included) | {median(turn_cpu):.0f} ms | "
              f"{max(turn_cpu):.0f} ms |")

        # Reload to page.
        profile = root / "profiles" / "default.yaml"
        good = profile.read_text("utf-8")
        show, clear = [], []
        driver.get(engine.url + "/app")
        wait_for(lambda: js(driver, "return window.__companion.state.ready"), 20, "app")
        js(driver, BANNER)
        for _ in range(args.runs):
            js(driver, "window.__bannerAt = []")
            written = time.time() * 1000
            profile.write_text(good + "speech: [broken\n", "utf-8")
            wait_for(lambda: js(driver, "return window.__bannerAt.some(e => !e.hidden)"), 20,
                     "the banner")
            show.append(js(driver, "return window.__bannerAt.find(e => !e.hidden).at") - written)
            written = time.time() * 1000
            profile.write_text(good, "utf-8")
            wait_for(lambda: js(driver, "return window.__bannerAt.some(e => e.hidden)"), 20,
                     "the fix")
            clear.append(js(driver, "return window.__bannerAt.find(e => e.hidden).at") - written)
            time.sleep(0.5)
        print()
        print("| reload to page | median | min | max |")
        print("| --- | --- | --- | --- |")
        print(row("broken profile saved -> error banner shown", show))
        print(row("fix saved -> banner gone", clear))
    finally:
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes the profile and exits
            spy.wait(30)
        stop_browser(driver)
        engine.stop()
        llm.terminate()
        llm.wait(10)


def top_functions(path: Path, n: int = 15) -> None:
    """The functions with the most samples on top of the stack (self time)."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        frame = stack.split(";")[-1]
        counts[frame] = counts.get(frame, 0) + int(samples)
        total += int(samples)
    print(f"\npy-spy: {total} samples; top functions by self time")
    for frame, count in sorted(counts.items(), key=lambda kv: -kv[1])[:n]:
        print(f"{100 * count / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
    if "--profile" in sys.argv:
        top_functions(Path(sys.argv[sys.argv.index("--profile") + 1]))
