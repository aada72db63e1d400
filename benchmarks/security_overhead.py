"""What the security layer costs per request, and the limiter under an address flood.

1. ``GET /api/status`` and a rate-limited ``POST /api/characters`` (a 422 body, so no
   disk write) over one keep-alive connection, with the security middleware and
   header hook, next to the same app with them removed (the baseline, same run).
   Goal: the guard adds well under a millisecond per request.
2. ``RateLimiter.take`` for a steady set of clients and for a flood of new
   addresses (every take evicts the oldest bucket): the bounded LRU must stay fast.

    .venv/bin/python benchmarks/security_overhead.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from companion_engine.app import create_app
from companion_engine.configload import load_config
from companion_engine.ratelimit import RateLimiter
from companion_engine.security import add_headers, security_middleware


def make_app(root: Path, guarded: bool) -> web.Application:
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    for sub in ("characters", "plugins", "data"):
        (root / sub).mkdir(exist_ok=True)
    (root / "profiles" / "default.yaml").write_text(yaml.safe_dump({
        "llm": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"},
        "speech": {"enabled": False, "tts": "none"}}))
    (root / "companion.yaml").write_text(yaml.safe_dump({
        "reload": False, "server": {"api_key": "bench-key-0123456789"},
        "rate_limit": {"requests": 100_000, "window_s": 1}}))
    app = create_app(load_config(root / "companion.yaml", env={}))
    if not guarded:
        app.middlewares.remove(security_middleware)
        app.on_response_prepare.remove(add_headers)
    return app


async def per_request_us(app: web.Application, method: str, path: str, body: bytes | None,
                         n: int) -> float:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}{path}"
    headers = {"Authorization": "Bearer bench-key-0123456789", "Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            for _ in range(50):  # warm-up
                async with http.request(method, url, data=body, headers=headers) as r:
                    await r.read()
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                async with http.request(method, url, data=body, headers=headers) as r:
                    await r.read()
                samples.append(time.perf_counter() - t0)
    finally:
        await runner.cleanup()
    return statistics.median(samples) * 1e6


def limiter_ns(keys: int, takes: int, max_clients: int) -> float:
    limiter = RateLimiter(max_clients=max_clients)
    names = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(keys)]
    t0 = time.perf_counter()
    for i in range(takes):
        limiter.take(names[i % keys], 100, 60)
    return (time.perf_counter() - t0) / takes * 1e9


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    cases = [("GET /api/status", "GET", "/api/status", None),
             ("POST /api/characters (422)", "POST", "/api/characters", b'{"name": 5}')]
    print("| request | guarded (median) | unguarded baseline | added |")
    print("| --- | --- | --- | --- |")
    for label, method, path, body in cases:
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            guarded = await per_request_us(make_app(Path(a), True), method, path, body,
                                           args.requests)
            bare = await per_request_us(make_app(Path(b), False), method, path, body,
                                        args.requests)
        print(f"| {label} | {guarded:.0f} µs | {bare:.0f} µs | {guarded - bare:+.0f} µs "
              f"({guarded / bare:.2f}x) |")
    print()
    print("| limiter | ns per take |")
    print("| --- | --- |")
    steady = limiter_ns(1_000, 1_000_000, 10_000)
    flood = limiter_ns(1_000_000, 1_000_000, 10_000)
    print(f"| 1 000 clients, LRU of 10 000 (no eviction) | {steady:.0f} |")
    print(f"| 1 000 000 new addresses, LRU of 10 000 (evicts every take) | {flood:.0f} "
          f"({flood / steady:.2f}x) |")


if __name__ == "__main__":
    asyncio.run(main())
