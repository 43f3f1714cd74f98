"""Traces: OpenTelemetry, exported with OTLP when the standard `OTEL_*` variables ask.

Tracing is on in a process when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, unless `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none`. `configure_tracing` then installs the SDK: the resource from
`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (service.name defaults to the process's),
the sampler from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: parent-based,
always on), batched export over OTLP/gRPC (`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`).

Off, `enabled()` is false and every helper below returns at once: no span, no context
change, no propagation header; the cost is one test of a module global per call.

Sampling: most traces are not sampled (OTEL_TRACES_SAMPLER_ARG=0.1 keeps one in ten), and
those must cost next to nothing. The sampler decides at a trace's root; with a
parent-based sampler (the default) every span below an unsampled one is dropped, so the
helpers below make no span there at all: the request's context stays current (its trace
and span ids are still in the log lines) and travels on to the next process as it came.

The spans Tandem makes itself (the README's "Operating Tandem" says why not through the
maintained grpc, ASGI and SQLAlchemy instrumentations: on the hot path they cost an
asyncio task per client call, a layer of ASGI wrappers per request, and a span per
statement even in unsampled traces, which together exceeded the 5% budget):
- the gateway's HTTP server span, per request (gateway.middleware), continuing a
  client's `traceparent`;
- a gRPC client span per upstream call (servicekit.observers), whose context travels in
  the call's metadata as W3C `traceparent` / `tracestate`;
- a gRPC server span per call (servicekit.interceptor), continuing the caller's;
- a span per batch (servicekit.batching) with a link to each request it serves: a
  coalesced read or a group insert answers many traces at once (fan-in);
- a span per SQL statement (`instrument_engine`): the statement with its placeholders,
  never its parameters.
The ai service's calls to the model provider are the anthropic SDK's own spans (model and
token counts, never the content: ai_service.server sets that, whatever
ANTHROPIC_OPEN_TELEMETRY_* say).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("servicekit.telemetry")

_tracer: trace.Tracer | None = None
# Whether spans below an unsampled span are dropped (a parent-based sampler): then none
# is made there.
_parent_based = True
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

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


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
    from opentelemetry.sdk.trace.sampling import ParentBased  # noqa: PLC0415

    global _parent_based  # noqa: PLW0603
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _parent_based = isinstance(provider.sampler, ParentBased)
    _tracer = provider.get_tracer("tandem")
    log.info("traces: exported over OTLP (sampler %s)", provider.sampler.get_description())

    def shutdown() -> None:
        global _tracer  # noqa: PLW0603
        _tracer = None
        provider.shutdown()

    return shutdown


def use_tracer(tracer: trace.Tracer | None) -> None:
    """Make spans with `tracer` (None: tracing off), whose sampler is parent-based: for
    tests with an in-memory SDK."""
    global _tracer, _parent_based  # noqa: PLW0603
    _tracer = tracer
    _parent_based = True


def _unsampled(span_context: SpanContext) -> bool:
    """Whether no span may be made under `span_context`: it is of a trace the sampler
    dropped, and the sampler drops what is below."""
    return _parent_based and span_context.is_valid and not span_context.trace_flags.sampled


def enabled() -> bool:
    return _tracer is not None


def current_ids() -> tuple[str, str] | None:
    """The current trace and span ids (hex), for log lines; None outside any trace."""
    if _tracer is None:
        return None
    span_context = _dropped.get() or trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def current_link() -> SpanContext | None:
    """The current span's context, to link a shared piece of work back to it."""
    if _tracer is None:
        return None
    span_context = _dropped.get() or trace.get_current_span().get_span_context()
    return span_context if span_context.is_valid else None


class ActiveSpan:
    """A span made current until `end`; `end` restores the context it replaced.

    For a request whose trace the sampler dropped, its span context is also set in
    `_dropped`: what the helpers below check first, one context-variable read, where
    OpenTelemetry's context API takes several calls.
    """

    __slots__ = ("_dropped_token", "_token", "span")

    def __init__(self, span: Span, parent: otel_context.Context, dropped: bool) -> None:
        self.span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._dropped_token = _dropped.set(span.get_span_context()) if dropped else None

    def end(self) -> None:
        if self._dropped_token is not None:
            with suppress(ValueError):  # ended in another context (a finalised generator)
                _dropped.reset(self._dropped_token)
        otel_context.detach(self._token)
        self.span.end()


# The span context of the unsampled trace the current request belongs to, if it does.
_dropped: ContextVar[SpanContext | None] = ContextVar("tandem_dropped_trace", default=None)
_ROOT = otel_context.Context()


def _server_span(
    name: str, remote: SpanContext | None, attributes: Mapping[str, Any]
) -> ActiveSpan:
    assert _tracer is not None
    if remote is not None and _unsampled(remote):
        # The caller's unsampled trace goes on as it came: no span of ours.
        return ActiveSpan(NonRecordingSpan(remote), _ROOT, True)
    parent = _ROOT if remote is None else trace.set_span_in_context(NonRecordingSpan(remote))
    span = _tracer.start_span(name, parent, SpanKind.SERVER, attributes)
    return ActiveSpan(span, parent, _unsampled(span.get_span_context()))


def _extract(traceparent: str | None, tracestate: str | None) -> SpanContext | None:
    """The span context a caller's W3C headers carry; None for none (or a malformed one).

    The common case, a version-00 `traceparent` and no `tracestate`, is parsed here: the
    SDK's propagator costs several times as much, on every request of every trace.
    """
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent)
    if match is None or tracestate is not None:
        carrier = {"traceparent": traceparent}
        if tracestate is not None:
            carrier["tracestate"] = tracestate
        found = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
        return found if found.is_valid else None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)))


def http_server_span(
    method: str, headers: Sequence[tuple[bytes, bytes]], attributes: Mapping[str, Any]
) -> ActiveSpan | None:
    """The span of an HTTP request (current until ended), continuing the client's
    `traceparent`; None when tracing is off."""
    if _tracer is None:
        return None
    traceparent = tracestate = None
    for key, value in headers:
        if key == b"traceparent":
            traceparent = value.decode("latin-1")
        elif key == b"tracestate":
            tracestate = value.decode("latin-1")
    return _server_span(method, _extract(traceparent, tracestate), attributes)


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
    traceparent = tracestate = None
    for key, value in metadata or ():
        if key == "traceparent":
            traceparent = value
        elif key == "tracestate":
            tracestate = value
    service, _, name = method.lstrip("/").partition("/")
    return _server_span(
        method.lstrip("/"),
        _extract(traceparent, tracestate),
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )


def end_grpc_server_span(active: ActiveSpan, code: grpc.StatusCode) -> None:
    span = active.span
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
    active.end()


def grpc_client_span(method: str, target: str, metadata: list[tuple[str, str]]) -> Span | None:
    """The span of one call to another service, a child of the current one; its
    context is added to `metadata`. None when tracing is off, and in an unsampled
    trace, whose context is added as it is."""
    if _tracer is None:
        return None
    current = _dropped.get() or trace.get_current_span().get_span_context()
    if _unsampled(current):
        _inject(metadata, current)
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
        _inject(metadata, span.get_span_context())
    return span


def _inject(metadata: list[tuple[str, str]], span_context: SpanContext) -> None:
    # No header may be sent twice: ours replaces any the caller passed on.
    metadata[:] = [pair for pair in metadata if pair[0] not in TRACE_HEADERS]
    metadata.append(
        (
            "traceparent",
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{span_context.trace_flags:02x}",
        )
    )
    if span_context.trace_state:
        metadata.append(("tracestate", span_context.trace_state.to_header()))


def end_grpc_client_span(span: Span, code: grpc.StatusCode) -> None:
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


def traced(links: Sequence[SpanContext | None]) -> bool:
    """Whether a batch serving requests of these spans gets a span (`batch_span`): when
    one of them is of a sampled trace."""
    return _tracer is not None and not all(link is None or _unsampled(link) for link in links)


@contextmanager
def batch_span(name: str, links: Sequence[SpanContext | None]) -> Iterator[None]:
    """A span around one batch, linked to the span of each request it serves (those
    made while tracing was on). Its parent is the first of those requests."""
    if not traced(links):
        yield
        return
    assert _tracer is not None
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
    """An internal span, current inside the block; None when tracing is off or the
    trace is unsampled."""
    if (
        _tracer is None
        or _dropped.get() is not None
        or _unsampled(trace.get_current_span().get_span_context())
    ):
        yield None
        return
    # Exceptions set the span's status, but are not recorded: their messages may quote
    # what a client sent.
    with _tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False
    ) as current:
        yield current


def instrument_engine(engine: AsyncEngine) -> None:
    """A span per SQL statement on `engine` while tracing is on, in sampled traces only:
    the statement with its placeholders, never its parameters."""
    if _tracer is None:
        return
    sync = engine.sync_engine
    attributes = {
        "db.system": sync.dialect.name,
        "db.system.name": sync.dialect.name,
        "db.namespace": sync.url.database or "",
    }
    event.listen(sync, "before_cursor_execute", partial(_statement_began, attributes))
    event.listen(sync, "after_cursor_execute", _statement_ended)
    event.listen(sync, "handle_error", _statement_failed)


def _statement_began(
    attributes: Mapping[str, str],
    _connection: Any,
    _cursor: Any,
    statement: str,
    _parameters: Any,
    context: Any,
    _executemany: bool,
) -> None:
    if _tracer is None or _dropped.get() is not None or not trace.get_current_span().is_recording():
        return
    operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
    context._tandem_span = _tracer.start_span(
        f"{operation} {attributes['db.namespace']}".rstrip(),
        kind=SpanKind.CLIENT,
        attributes={**attributes, "db.operation.name": operation, "db.query.text": statement},
    )


def _statement_ended(
    _connection: Any, _cursor: Any, _statement: str, _parameters: Any, context: Any, _many: bool
) -> None:
    span = getattr(context, "_tandem_span", None)
    if span is not None:
        span.end()
        context._tandem_span = None


def _statement_failed(exception_context: Any) -> None:
    context = exception_context.execution_context
    span = getattr(context, "_tandem_span", None)
    if span is not None:
        # The error's type only: its text may quote the statement's parameters.
        span.set_status(
            Status(StatusCode.ERROR, type(exception_context.original_exception).__name__)
        )
        span.end()
        context._tandem_span = None
