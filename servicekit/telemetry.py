"""Traces: OpenTelemetry, exported with OTLP when the standard `OTEL_*` variables ask.

Tracing is on in a process when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, unless `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none`. `configure_tracing` then installs the SDK: the resource from
`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (service.name defaults to the process's),
the sampler from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: parent-based,
always on), batched export over OTLP/gRPC (`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`).

Off, `enabled()` is false and every helper below returns at once: no span, no context
change, no propagation header; the cost is one test of a module global per call.

The spans Tandem makes itself (the README's "Operating Tandem" says why not through the
grpc and ASGI instrumentations: those cost an asyncio task per client call and a layer
of ASGI wrappers per request on the hot path):
- the gateway's HTTP server span, per request (gateway.middleware), continuing a
  client's `traceparent`;
- a gRPC client span per upstream call (servicekit.observers), whose context travels in
  the call's metadata as W3C `traceparent` / `tracestate`;
- a gRPC server span per call (servicekit.interceptor), continuing the caller's;
- a span per batch (servicekit.batching) with a link to each request it serves: a
  coalesced read or a group insert answers many traces at once (fan-in).
The database spans are opentelemetry-instrumentation-sqlalchemy's, and the ai service's
calls to the model provider the anthropic SDK's own (model and token counts, never the
content: ai_service.server sets that, whatever ANTHROPIC_OPEN_TELEMETRY_* say).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("servicekit.telemetry")

_tracer: trace.Tracer | None = None
_propagator = TraceContextTextMapPropagator()
TRACE_HEADERS = frozenset(_propagator.fields)  # traceparent, tracestate

# Server spans of calls that ended so are errors (OpenTelemetry's gRPC conventions): the
# others are the caller's mistake, not this server's.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

Pairs = Sequence[tuple[str, str | bytes]]


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def configure_tracing(service_name: str) -> Callable[[], None] | None:
    """Install the SDK and its OTLP exporter if `wanted()`; the function that flushes
    and stops it at exit, else None (and tracing stays off)."""
    global _tracer  # noqa: PLW0603 - one provider per process, as OpenTelemetry has it
    if not wanted():
        return None
    # Imported here: a process that exports nothing never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over this.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("tandem")
    log.info("traces: exported over OTLP (sampler %s)", provider.sampler.get_description())

    def shutdown() -> None:
        global _tracer  # noqa: PLW0603
        _tracer = None
        provider.shutdown()

    return shutdown


def use_tracer(tracer: trace.Tracer | None) -> None:
    """Make spans with `tracer` (None: tracing off): for tests with an in-memory SDK."""
    global _tracer  # noqa: PLW0603
    _tracer = tracer


def enabled() -> bool:
    return _tracer is not None


def current_ids() -> tuple[str, str] | None:
    """The current trace and span ids (hex), for log lines; None outside any trace."""
    if _tracer is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def current_link() -> SpanContext | None:
    """The current span's context, to link a shared piece of work back to it."""
    if _tracer is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    return span_context if span_context.is_valid else None


class _PairsGetter(Getter[Pairs]):
    """Reads gRPC metadata (a sequence of pairs) for the W3C propagator."""

    def get(self, carrier: Pairs, key: str) -> list[str] | None:
        found = [v for k, v in carrier if k == key and isinstance(v, str)]
        return found or None

    def keys(self, carrier: Pairs) -> list[str]:
        return [k for k, _ in carrier]


_PAIRS = _PairsGetter()


class _HeadersGetter(Getter[Sequence[tuple[bytes, bytes]]]):
    """Reads ASGI headers (lowercase byte pairs) for the W3C propagator."""

    def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.encode("ascii")
        found = [v.decode("latin-1") for k, v in carrier if k == name]
        return found or None

    def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_HEADERS = _HeadersGetter()


class ActiveSpan:
    """A span made current until `end`; `end` restores the context it replaced."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span, parent: otel_context.Context | None) -> None:
        self.span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))

    def end(self) -> None:
        otel_context.detach(self._token)
        self.span.end()


def http_server_span(
    method: str, headers: Sequence[tuple[bytes, bytes]], attributes: Mapping[str, Any]
) -> ActiveSpan | None:
    """The span of an HTTP request (current until ended), continuing the client's
    `traceparent`; None when tracing is off."""
    if _tracer is None:
        return None
    parent = _propagator.extract(headers, getter=_HEADERS)
    span = _tracer.start_span(method, parent, SpanKind.SERVER, attributes)
    return ActiveSpan(span, parent)


def end_http_server_span(active: ActiveSpan, route: str | None, status: int) -> None:
    span = active.span
    if span.is_recording():
        if route is not None:
            span.update_name(f"{span.name} {route}")  # type: ignore[attr-defined]
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
    active.end()


def grpc_server_span(method: str, metadata: Any) -> ActiveSpan | None:
    """The span of one call this server handles (current until ended), continuing the
    caller's trace; None when tracing is off. `metadata`: the call's invocation
    metadata, pairs of strings (and bytes for -bin keys)."""
    if _tracer is None:
        return None
    parent = _propagator.extract(metadata or (), getter=_PAIRS)
    service, _, name = method.lstrip("/").partition("/")
    span = _tracer.start_span(
        method.lstrip("/"),
        parent,
        SpanKind.SERVER,
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    return ActiveSpan(span, parent)


def end_grpc_server_span(active: ActiveSpan, code: grpc.StatusCode) -> None:
    span = active.span
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
    active.end()


def grpc_client_span(method: str, target: str, metadata: list[tuple[str, str]]) -> Span | None:
    """The span of one call to another service, a child of the current one; its
    context is added to `metadata`. None when tracing is off."""
    if _tracer is None:
        return None
    service, _, name = method.lstrip("/").partition("/")
    span = _tracer.start_span(
        method.lstrip("/"),
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "server.address": target,
        },
    )
    if span.get_span_context().is_valid:
        # No header may be sent twice: the span's replaces any the caller passed on.
        metadata[:] = [pair for pair in metadata if pair[0] not in TRACE_HEADERS]
        _propagator.inject(metadata, trace.set_span_in_context(span), setter=_PAIRS_SETTER)
    return span


def end_grpc_client_span(span: Span, code: grpc.StatusCode) -> None:
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class _PairsSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key, value))


_PAIRS_SETTER = _PairsSetter()


@contextmanager
def batch_span(name: str, links: Sequence[SpanContext | None]) -> Iterator[None]:
    """A span around one batch, linked to the span of each request it serves (those
    made while tracing was on). Its parent is the first of those requests."""
    if _tracer is None:
        yield
        return
    span_links = [Link(link) for link in links if link is not None]
    parent = (
        trace.set_span_in_context(NonRecordingSpan(span_links[0].context)) if span_links else None
    )
    with _tracer.start_as_current_span(
        name,
        parent,
        kind=SpanKind.INTERNAL,
        links=span_links,
        attributes={"tandem.batch.size": len(links)},
        record_exception=False,
    ):
        yield


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """An internal span, current inside the block; None when tracing is off."""
    if _tracer is None:
        yield None
        return
    # Exceptions set the span's status, but are not recorded: their messages may quote
    # what a client sent.
    with _tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False
    ) as current:
        yield current


def instrument_engine(engine: AsyncEngine) -> None:
    """A span per statement on `engine` (opentelemetry-instrumentation-sqlalchemy), when
    tracing is on. Statements only, never their parameters."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.sqlalchemy import (  # noqa: PLC0415
        SQLAlchemyInstrumentor,
    )

    # It declares SQLAlchemy < 2.1 but works with 2.1 (tests/e2e/test_observability.py
    # sees its spans): its check would refuse to instrument.
    SQLAlchemyInstrumentor().instrument(
        engine=engine.sync_engine, tracer_provider=trace.get_tracer_provider(), skip_dep_check=True
    )
