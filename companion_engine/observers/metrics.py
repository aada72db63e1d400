"""``GET /metrics``: Prometheus metrics of turns, speech, prompt stages, reloads and limits.

Protected like the ``/-`` routes (the API key when one is set). With
``server.workers`` > 1 the workers write to one folder (``PROMETHEUS_MULTIPROC_DIR``,
set by the supervisor) and whichever worker answers reports the sum of all of them
(``prometheus_client``'s multi-process mode). With several engines, scrape each.

| metric | type | labels |
| --- | --- | --- |
| ``companion_turns_total`` | counter | ``status``: complete, interrupted, error |
| ``companion_turn_errors_total`` | counter | ``type``: provider_offline, timeout, ... |
| ``companion_ttft_seconds``, ``companion_ttfa_seconds``, ``companion_turn_seconds`` | histogram | |
| ``companion_tokens_total`` | counter | ``kind``: prompt, completion |
| ``companion_active_turns`` | gauge | (streams and ``/api/chat`` turns in progress) |
| ``companion_synthesis_seconds`` | histogram | ``backend`` |
| ``companion_prompt_stage_seconds`` | histogram | ``stage`` |
| ``companion_lorebook_scan_seconds`` | histogram | |
| ``companion_llm_seconds`` | histogram | (request sent to last token) |
| ``companion_reloads_total`` | counter | ``result``: ok, failed |
| ``companion_rate_limited_total`` | counter | ``reason``: rate, streams, auth |
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from companion_engine import hookimpl
from companion_engine.openapi import ApiRoutes

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from companion_engine.engine import Engine
    from companion_engine.turn import Turn

STASH = "companion_engine.observers.metrics"
TURN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1, 2.5, 5)

routes = ApiRoutes()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass
class Metrics:
    """One engine's metric objects, in their own registry (tests run many engines)."""

    registry: CollectorRegistry
    turns: Counter
    turn_errors: Counter
    ttft: Histogram
    ttfa: Histogram
    total: Histogram
    tokens: Counter
    active: Gauge
    synthesis: Histogram
    stage: Histogram
    lorebook: Histogram
    llm: Histogram
    reloads: Counter
    limited: Counter

    @classmethod
    def create(cls) -> Metrics:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = CollectorRegistry(auto_describe=True)
        return cls(
            registry=r,
            turns=Counter("companion_turns", "Chat turns by how they ended", ["status"],
                          registry=r),
            turn_errors=Counter("companion_turn_errors", "Failed turns by error type",
                                ["type"], registry=r),
            ttft=Histogram("companion_ttft_seconds", "Turn start to first token",
                           buckets=TURN_BUCKETS, registry=r),
            ttfa=Histogram("companion_ttfa_seconds", "Turn start to first audio",
                           buckets=TURN_BUCKETS, registry=r),
            total=Histogram("companion_turn_seconds", "Turn start to done",
                            buckets=TURN_BUCKETS, registry=r),
            tokens=Counter("companion_tokens", "Tokens of finished turns", ["kind"],
                           registry=r),
            active=Gauge("companion_active_turns", "Turns in progress (streams included)",
                         multiprocess_mode="livesum", registry=r),
            synthesis=Histogram("companion_synthesis_seconds", "Synthesis of one sentence",
                                ["backend"], buckets=FAST_BUCKETS, registry=r),
            stage=Histogram("companion_prompt_stage_seconds", "One prompt stage of a turn",
                            ["stage"], buckets=FAST_BUCKETS, registry=r),
            lorebook=Histogram("companion_lorebook_scan_seconds",
                               "Lorebook injectors of a turn (scan and placement)",
                               buckets=FAST_BUCKETS, registry=r),
            llm=Histogram("companion_llm_seconds", "LLM request sent to its last token",
                          buckets=TURN_BUCKETS, registry=r),
            reloads=Counter("companion_reloads", "Reloads by result", ["result"], registry=r),
            limited=Counter("companion_rate_limited", "Requests refused with 429", ["reason"],
                            registry=r),
        )

    def observe_turn(self, turn: Turn) -> None:
        result = turn.result
        if result is None:
            return
        self.turns.labels(result.status).inc()
        if result.error:
            self.turn_errors.labels(str(result.error.get("type", "unknown"))).inc()
        timings = result.timings or {}
        for histogram, key in ((self.ttft, "ttft_ms"), (self.ttfa, "ttfa_ms"),
                               (self.total, "total_ms")):
            value = timings.get(key)
            if value is not None:
                histogram.observe(value / 1000)
        usage = result.usage or {}
        for kind in ("prompt", "completion"):
            count = usage.get(f"{kind}_tokens")
            if isinstance(count, int) and count > 0:
                self.tokens.labels(kind).inc(count)
        lore = 0.0
        for span in turn.spans:
            if span.name == "synthesis":
                self.synthesis.labels(str(span.attributes.get("backend"))).observe(span.seconds)
            elif span.name == "prompt_stage":
                self.stage.labels(str(span.attributes.get("stage"))).observe(span.seconds)
                if span.attributes.get("kind") == "lorebook_injector":
                    lore += span.seconds
            elif span.name == "llm":
                self.llm.observe(span.seconds)
        if any(s.attributes.get("kind") == "lorebook_injector" for s in turn.spans):
            self.lorebook.observe(lore)

    def exposition(self) -> bytes:
        """The text format: this engine's registry, or every worker's files summed."""
        from prometheus_client import CollectorRegistry, generate_latest

        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=folder)
        return generate_latest(merged)


def metrics_of(engine: Engine) -> Metrics | None:
    found = engine.stash.get(STASH)
    return found if isinstance(found, Metrics) else None


@hookimpl
def startup(engine: Engine) -> None:
    if engine.config.metrics.enabled:
        engine.stash[STASH] = Metrics.create()


@hookimpl
def turn_started(engine: Engine, turn: Turn) -> None:
    metrics = metrics_of(engine)
    if metrics is not None:
        metrics.active.inc()


@hookimpl
def turn_completed(engine: Engine, turn: Turn) -> None:
    metrics = metrics_of(engine)
    if metrics is not None:
        metrics.active.dec()
        metrics.observe_turn(turn)


@hookimpl
def config_reloaded(engine: Engine) -> None:
    metrics = metrics_of(engine)
    if metrics is not None:
        metrics.reloads.labels("ok").inc()


@hookimpl
def reload_failed(engine: Engine, error: str) -> None:
    metrics = metrics_of(engine)
    if metrics is not None:
        metrics.reloads.labels("failed").inc()


@hookimpl
def rate_limited(engine: Engine, request: web.Request, reason: str) -> None:
    metrics = metrics_of(engine)
    if metrics is not None:
        metrics.limited.labels(reason).inc()


METRICS_DOC = {"text/plain": {"schema": {
    "type": "string", "description": "Prometheus text exposition format 0.0.4"}}}


@routes.get("/metrics", response_content=METRICS_DOC, tags=["introspection"],
            errors=(401, 404), summary="Prometheus metrics (turns, speech, reloads, limits)")
async def metrics_route(request: web.Request) -> web.Response:
    from companion_engine.errors import ApiError
    from companion_engine.keys import ENGINE

    metrics = metrics_of(request.app[ENGINE])
    if metrics is None:
        raise ApiError(404, "metrics are off (metrics.enabled: false)")
    # Multi-process mode reads every worker's files: not on the event loop.
    body = await asyncio.to_thread(metrics.exposition)
    return web.Response(body=body, headers={
        "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@hookimpl
def register_routes(engine: Engine) -> list[web.AbstractRouteDef]:
    return list(routes)
