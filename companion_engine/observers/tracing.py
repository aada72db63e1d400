"""OpenTelemetry traces: one span per turn, with children for prompt, LLM and each sentence.

Off unless ``tracing.enabled`` and the ``tracing`` extra is installed
(``pip install 'companion-engine[tracing]'``). The spans are built when the turn
has finished, from the timings it recorded (``turn.spans``, explicit start and end
times), so tracing adds nothing to the token path:

    turn (conversation, character, model, status, ttft/ttfa, tokens)
    ├── prompt
    │   └── prompt.<stage>        (one per prompt stage: lorebook, history, ...)
    ├── llm
    └── synthesis #<index>        (one per spoken sentence; backend, characters)

Exporters: ``otlp`` (OTLP over HTTP, to ``tracing.endpoint`` or the standard
``OTEL_EXPORTER_OTLP_*`` variables) or ``console``. ``set_exporter`` lets a test or a
plugin send the spans elsewhere (e.g. an in-memory exporter).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from loguru import logger

from companion_engine import hookimpl

if TYPE_CHECKING:
    from companion_engine.engine import Engine
    from companion_engine.turn import Turn

STASH = "companion_engine.observers.tracing"


class TurnTracer:
    """A tracer provider of this engine and the clock offset from ``perf_counter``."""

    def __init__(self, service_name: str, exporter: Any) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("companion_engine")
        #: epoch ns = perf_counter s * 1e9 + offset
        self.offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)

    def ns(self, perf: float) -> int:
        return int(perf * 1e9) + self.offset_ns

    def trace(self, turn: Turn) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        result = turn.result
        ended = max([turn.started_at, *(s.end for s in turn.spans)])
        if result is not None and result.timings.get("total_ms") is not None:
            ended = max(ended, turn.started_at + result.timings["total_ms"] / 1000)
        attributes: dict[str, Any] = {"companion.model": turn.model,
                                      "companion.conversation_id": turn.conversation_id or "",
                                      "companion.character": turn.char_name}
        if result is not None:
            attributes["companion.status"] = result.status
            for key in ("ttft_ms", "ttfa_ms"):
                if result.timings.get(key) is not None:
                    attributes[f"companion.{key}"] = result.timings[key]
            for key, value in (result.usage or {}).items():
                if isinstance(value, int):
                    attributes[f"gen_ai.usage.{key}"] = value
        root = self.tracer.start_span("turn", start_time=self.ns(turn.started_at),
                                      attributes=attributes)
        if result is not None and result.status == "error":
            root.set_status(Status(StatusCode.ERROR, str((result.error or {}).get("type"))))
        context = trace.set_span_in_context(root)
        prompt = next((s for s in turn.spans if s.name == "prompt"), None)
        prompt_context = context
        if prompt is not None:
            parent = self.tracer.start_span("prompt", context=context,
                                            start_time=self.ns(prompt.start))
            prompt_context = trace.set_span_in_context(parent)
        for span in turn.spans:
            if span.name == "prompt":
                continue
            if span.name == "prompt_stage":
                name, ctx = f"prompt.{span.attributes.get('stage')}", prompt_context
            elif span.name == "synthesis":
                name, ctx = f"synthesis #{span.attributes.get('index')}", context
            else:
                name, ctx = span.name, context
            child = self.tracer.start_span(
                name, context=ctx, start_time=self.ns(span.start),
                attributes={f"companion.{k}": v for k, v in span.attributes.items()
                            if isinstance(v, str | int | float | bool)})
            child.end(end_time=self.ns(span.end))
        if prompt is not None:
            parent.end(end_time=self.ns(prompt.end))
        root.end(end_time=self.ns(ended))

    def shutdown(self) -> None:
        self.provider.shutdown()


def make_exporter(kind: str, endpoint: str | None) -> Any:
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()


def set_exporter(engine: Engine, exporter: Any) -> TurnTracer:
    """Trace this engine's turns to ``exporter`` (whatever ``tracing.exporter`` says)."""
    tracer = engine.stash[STASH] = TurnTracer(engine.config.tracing.service_name, exporter)
    return tracer


@hookimpl
def startup(engine: Engine) -> None:
    settings = engine.config.tracing
    if not settings.enabled:
        return
    try:
        exporter = make_exporter(settings.exporter, settings.endpoint)
    except ImportError as exc:
        logger.warning("tracing.enabled but OpenTelemetry is missing ({}); install "
                       "'companion-engine[tracing]'", exc.name)
        return
    set_exporter(engine, exporter)
    logger.info("tracing turns with OpenTelemetry ({})", settings.exporter)


@hookimpl
def turn_completed(engine: Engine, turn: Turn) -> None:
    tracer = engine.stash.get(STASH)
    if isinstance(tracer, TurnTracer):
        tracer.trace(turn)  # spans are queued; the batch processor exports off the loop


@hookimpl
async def shutdown(engine: Engine) -> None:
    tracer = engine.stash.pop(STASH, None)
    if isinstance(tracer, TurnTracer):
        await asyncio.to_thread(tracer.shutdown)  # flushes the last spans over the network
