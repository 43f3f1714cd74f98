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
those must cost next to nothing. The sampler decides once, at a trace's root (for the
SDK's parent-based samplers by comparing the new trace id with the ratio's bound, as the
SDK would); with a parent-based sampler (the default) every span below an unsampled one
is dropped, so the helpers below make no span there at all, and no OpenTelemetry
context of the request's own: one context variable holds what the log lines read and the
next call sends on, a caller's `traceparent` as it came (`Passed`) or, for a trace begun
here, its trace id alone (`_begun_here`). A sampled root gets the trace id the sampler
was asked about.

The spans Tandem makes itself (the README's "Operating Tandem" says why not through the
maintained grpc, ASGI and SQLAlchemy instrumentations: on the hot path they cost an
asyncio task per client call, a layer of ASGI wrappers per request, and a span per
statement even in unsampled traces, which together exceeded the 5% budget):
- the gateway's HTTP server span, per request (gateway.middleware), continuing a
  client's `traceparent`;
- a gRPC client span per upstream call (servicekit.observers), whose context travels in
  the call's metadata as W3C `traceparent` / `tracestate`;
- a gRPC server span per call (servicekit.interceptor), continuing the caller's;
- a span per SQL statement (`instrument_engine`): the statement with its placeholders,
  never its parameters.
A batch (servicekit.batching: a coalesced read, a group insert) answers many traces at
once: its call's or statements' spans link to each request it serves (`fan_in`), in
place of a span of the batch's own, which would cost one more span a batch.
The ai service's calls to the model provider are the anthropic SDK's own spans (model and
token counts, never the content: ai_service.server sets that, whatever
ANTHROPIC_OPEN_TELEMETRY_* say).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar, Token
from functools import partial
from random import getrandbits
from typing import TYPE_CHECKING, Any, TypeAlias

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
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from servicekit.light_spans import Maker

log = logging.getLogger("servicekit.telemetry")

_tracer: trace.Tracer | None = None
# Whether spans below an unsampled span are dropped (a parent-based sampler): then none
# is made there.
_parent_based = True
# What `_server_span` compares a new trace id with, when it can (`_bound_of`).
_root_bound: int | None = None
# What makes the spans of sampled traces, where the sampler lets it (light_spans); None:
# the SDK's tracer does.
_maker: Maker | None = None
# Whether code in this process makes spans through OpenTelemetry's API itself (the ai
# service's anthropic SDK): then each request's span, or its unsampled trace, is made
# current in OpenTelemetry's context too, and a span current there is seen here. Elsewhere
# Tandem's own context variable (`_current`) is all: OpenTelemetry's context API costs
# several calls and objects per request.
_mirror = True
TRACE_ID_LIMIT = (1 << 64) - 1
# The trace id the next root span gets (`_PresetTraceIds`): the one the sampler was
# already asked about, so that a root is sampled by one decision, not two.
_next_trace_id: ContextVar[int | None] = ContextVar("tandem_next_trace_id", default=None)
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
# Each status code's number, and whether the server is at fault (its span's status is then
# ERROR), by identity: an Enum member hashes, and reads its value, in Python code.
_CODES = {id(code): (code.value[0], code in _SERVER_ERRORS) for code in grpc.StatusCode}

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


def configure_tracing(service_name: str, *, api_spans: bool = False) -> Callable[[], None] | None:
    """Install the SDK and its OTLP exporter if `wanted()`; the function that flushes
    and stops it at exit, else None (and tracing stays off). `api_spans`: code in this
    process makes spans through OpenTelemetry's API itself (see `_mirror`)."""
    if not wanted():
        return None
    # Imported here: a process that exports nothing never loads the SDK or the exporter.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over this.
    from opentelemetry.sdk.trace.sampling import ParentBased  # noqa: PLC0415

    from servicekit.otlp_export import SpanExporter  # noqa: PLC0415

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(SpanExporter()))
    trace.set_tracer_provider(provider)
    # One provider per process, as OpenTelemetry has it.
    _install(
        provider.get_tracer("tandem"),
        parent_based=isinstance(provider.sampler, ParentBased),
        mirror=api_spans,
    )
    log.info("traces: exported over OTLP (sampler %s)", provider.sampler.get_description())

    def shutdown() -> None:
        _install(None, parent_based=True)
        provider.shutdown()

    return shutdown


def use_tracer(tracer: trace.Tracer | None, *, mirror: bool = True) -> None:
    """Make spans with `tracer` (None: tracing off), whose sampler is parent-based: for
    tests with an in-memory SDK (`mirror`: see `_mirror`)."""
    _install(tracer, parent_based=True, mirror=mirror)


def _install(tracer: trace.Tracer | None, *, parent_based: bool, mirror: bool = True) -> None:
    global _tracer, _parent_based, _root_bound, _maker, _mirror  # noqa: PLW0603
    _tracer = tracer
    _parent_based = parent_based
    _mirror = mirror
    _root_bound = _bound_of(getattr(tracer, "sampler", None))
    _maker = None
    ids = getattr(tracer, "id_generator", None)
    if ids is not None and not isinstance(ids, _PresetTraceIds):
        tracer.id_generator = ids = _PresetTraceIds(ids)  # type: ignore[union-attr]
    if _root_bound is not None and _keeps_sampled_children(tracer.sampler):  # type: ignore[union-attr]
        from servicekit.light_spans import Maker  # noqa: PLC0415 - loaded with the SDK

        _maker = Maker(tracer, ids.span_ids())  # type: ignore[union-attr]


def _bound_of(sampler: object) -> int | None:
    """For a parent-based sampler with an always-on, always-off or ratio root: the
    bound under which a new trace id (its low 64 bits) is sampled. None for others."""
    if sampler is None:
        return None
    from opentelemetry.sdk.trace import sampling  # noqa: PLC0415 - loaded with the SDK

    root = getattr(sampler, "_root", None) if isinstance(sampler, sampling.ParentBased) else None
    if isinstance(root, sampling.TraceIdRatioBased):
        return root.bound
    if root is sampling.ALWAYS_ON:
        return TRACE_ID_LIMIT + 1
    if root is sampling.ALWAYS_OFF:
        return 0
    return None


def _keeps_sampled_children(sampler: Any) -> bool:
    """Whether the (parent-based) sampler samples every span under a sampled one, as
    the default does: then `_maker`'s spans need not ask it."""
    from opentelemetry.sdk.trace import sampling  # noqa: PLC0415 - loaded with the SDK

    return (
        getattr(sampler, "_local_parent_sampled", None) is sampling.ALWAYS_ON
        and getattr(sampler, "_remote_parent_sampled", None) is sampling.ALWAYS_ON
    )


class _PresetTraceIds:
    """The SDK's id generator, except for a root whose trace id `_root_span` chose."""

    def __init__(self, ids: Any) -> None:
        self._ids = ids

    def generate_trace_id(self) -> int:
        preset = _next_trace_id.get()
        return preset if preset is not None else int(self._ids.generate_trace_id())

    def generate_span_id(self) -> int:
        return int(self._ids.generate_span_id())

    def span_ids(self) -> Callable[[], int]:
        """What makes a span id: with the SDK's random generator, its rule called
        directly (three calls fewer per span)."""
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator  # noqa: PLC0415

        return _random_span_id if type(self._ids) is RandomIdGenerator else self.generate_span_id

    def is_trace_id_random(self) -> bool:
        return bool(getattr(self._ids, "is_trace_id_random", lambda: True)())


def _random_span_id() -> int:
    """RandomIdGenerator's rule: 64 random bits, never all zero."""
    span_id = getrandbits(64)
    while not span_id:
        span_id = getrandbits(64)
    return span_id


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
    current = _current.get()
    if isinstance(current, int):
        traceparent = _begun_here(current)
        return traceparent[3:35], traceparent[36:52]
    if isinstance(current, Passed):
        return current.trace_id, current.span_id
    span_context = current.parent if isinstance(current, FanIn) else _context_of(current)
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def current_link() -> SpanContext | None:
    """The current span's context, to link a shared piece of work back to it; None
    outside a trace, and in an unsampled one (no span of it is ever recorded)."""
    if _tracer is None:
        return None
    current = _current.get()
    if isinstance(current, _UNSAMPLED_KINDS):
        return None
    if isinstance(current, FanIn):
        return current.parent
    span_context = _context_of(current)
    return span_context if span_context.is_valid else None


def _context_of(current: Span | None) -> SpanContext:
    """The context of `current` (the current span of ours), or with none, of the span
    current in OpenTelemetry's context where that is looked at (`_mirror`)."""
    if current is not None:
        return current.get_span_context()
    if _mirror:
        return trace.get_current_span().get_span_context()
    return trace.INVALID_SPAN_CONTEXT


class Passed:
    """The context of a request of a caller's unsampled trace, under a parent-based
    sampler: no span is made for it, here or below, and it is passed on to the next
    process as it came (a well-formed version-00 `traceparent`)."""

    __slots__ = ("traceparent", "tracestate")

    def __init__(self, traceparent: str, tracestate: str | None) -> None:
        self.traceparent = traceparent
        self.tracestate = tracestate

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def span_id(self) -> str:
        return self.traceparent[36:52]


# What `_current` holds in an unsampled trace (the caller's, or one begun here).
_UNSAMPLED_KINDS = (int, Passed)


def _begun_here(trace_id: int) -> str:
    """The `traceparent` of an unsampled trace begun in this process, whose context is
    its trace id alone: an int, made current at no more cost than the id's making (an
    object per request would double that). Its parent id is the trace id's high half:
    no span of the trace is recorded, so any id serves, and this one is the same for
    every call and log line of the request without being kept. Flag 02: the trace id
    is random (W3C), as the SDK would say."""
    return _traceparent(trace_id, (trace_id >> 64) or 1, 0x02)


class FanIn:
    """Shared work serving requests of sampled traces (a coalesced call, a group insert):
    it has no span of its own. Each span made directly in it is a child of the first
    sampled request, linked to each sampled request served (OpenTelemetry's fan-in),
    with the batch's name and size as attributes."""

    __slots__ = ("attributes", "links", "parent")

    def __init__(self, name: str, size: int, links: Sequence[SpanContext]) -> None:
        self.parent = links[0]
        self.links = tuple(Link(link) for link in links)
        self.attributes = {"tandem.batch": name, "tandem.batch.size": size}

    def start(self, name: str, kind: SpanKind, attributes: Mapping[str, Any] | None) -> Span:
        """A span of the batch's work: the batch's attributes added to `attributes`."""
        with_batch = {**attributes, **self.attributes} if attributes else self.attributes
        return _start(name, self.parent, kind, with_batch, self.links)


# The trace of the request running in this context, for the helpers below: a span of
# ours (sampled), unsampled a `Passed` (the caller's) or an int (the trace id of one begun
# here, `_begun_here`), a `FanIn` (a batch's shared work), or None (outside any trace,
# or where `_mirror`, see OpenTelemetry's context).
_Current: TypeAlias = "Span | Passed | FanIn | int | None"
_current: ContextVar[_Current] = ContextVar("tandem_trace", default=None)
_ROOT = otel_context.Context()
# OpenTelemetry's current context while a request of an unsampled trace runs: for code
# that makes spans through the API itself (the ai service's anthropic SDK), which so
# makes none either (the sampler is parent-based). One span context for all such
# requests: their own ids are in `Passed`, and nothing of theirs is ever exported.
_UNSAMPLED = trace.set_span_in_context(
    NonRecordingSpan(SpanContext(1, 1, is_remote=True, trace_flags=TraceFlags(0))), _ROOT
)


def _restore(token: Token[_Current]) -> None:
    """The context as it was before `token`'s change."""
    # Not contextlib.suppress: that is two calls more, on every request.
    try:  # noqa: SIM105
        _current.reset(token)
    except ValueError:  # ended in another context (a finalised generator)
        pass


# What a request's start returns for its end: its span (`ActiveSpan`), or where an
# unsampled trace begins here and nothing mirrors it, the token that restores the context
# (no object of ours per request, for most requests).
Started: TypeAlias = "ActiveSpan | Token[_Current]"


class ActiveSpan:
    """A request's span, or None with what is current instead (the unsampled trace's
    `Passed` or trace id, a batch's `FanIn`), current until `end`, which restores the
    context it replaced."""

    __slots__ = ("_otel_token", "_token", "span")

    def __init__(self, span: Span | None, other: Passed | FanIn | int | None = None) -> None:
        self.span = span
        self._token = _current.set(span if span is not None else other)
        self._otel_token = None
        if _mirror:
            if span is not None:
                context = trace.set_span_in_context(span, _ROOT)
            elif isinstance(other, FanIn):
                context = trace.set_span_in_context(NonRecordingSpan(other.parent), _ROOT)
            else:
                context = _UNSAMPLED
            self._otel_token = otel_context.attach(context)

    # A context manager too (`fan_in`): current from its making, not its entering.
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        self.end()

    def end(self) -> None:
        _restore(self._token)
        if self._otel_token is not None:
            otel_context.detach(self._otel_token)
        if self.span is not None:
            self.span.end()


def _server_span(
    name: str,
    traceparent: str | None,
    tracestate: str | None,
    attributes: Mapping[str, Any],
) -> Started:
    remote = None if traceparent is None else _extract(traceparent, tracestate)
    trace_id = None
    if _parent_based:
        if remote is not None:
            passed = _passed_on(remote, traceparent, tracestate)
            if passed is not None:
                return ActiveSpan(None, passed)
        else:
            # A new trace, of a random trace id (so an unsampled one's flags say so, W3C's
            # random-trace-id flag, as the SDK's would), kept if the sampler keeps that
            # id. Most requests take this way: in line, not through three more calls.
            trace_id = getrandbits(128) or 1
            if not (
                trace_id & TRACE_ID_LIMIT < _root_bound
                if _root_bound is not None
                else _sampler_keeps(trace_id, name)
            ):
                return ActiveSpan(None, trace_id) if _mirror else _current.set(trace_id)
    return ActiveSpan(_start(name, remote, SpanKind.SERVER, attributes, trace_id=trace_id))


def _start(
    name: str,
    parent: SpanContext | None,
    kind: SpanKind,
    attributes: Mapping[str, Any] | None,
    links: Sequence[Link] = (),
    *,
    trace_id: int | None = None,
) -> Span:
    """A span under `parent`, of a sampled trace (`parent`'s, or for a root, `trace_id`,
    which the sampler has already kept); None for either: the SDK asks the sampler."""
    assert _tracer is not None
    if _maker is not None:
        if parent is not None and parent.trace_flags.sampled:
            return _maker.start(name, parent.trace_id, parent, kind, attributes, links)
        if parent is None and trace_id is not None:
            return _maker.start(name, trace_id, None, kind, attributes, links)
    if parent is None:
        token = _next_trace_id.set(trace_id)
        try:
            return _tracer.start_span(name, _ROOT, kind, attributes, links)
        finally:
            _next_trace_id.reset(token)
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    return _tracer.start_span(name, context, kind, attributes, links)


def _passed_on(remote: SpanContext, traceparent: Any, tracestate: str | None) -> Passed | None:
    """A caller's unsampled trace, to pass on as it came; None for a sampled one."""
    if remote.trace_flags.sampled:
        return None
    if tracestate is not None:  # rare: the propagator's normalised form goes on
        tracestate = remote.trace_state.to_header() or None
    return Passed(traceparent if _TRACEPARENT.match(traceparent) else _format(remote), tracestate)


def _sampler_keeps(trace_id: int, name: str) -> bool:
    """The sampler's decision on a new trace, where `_root_bound` cannot take it for it
    (a ratio's is one comparison, where asking the sampler costs 2 µs)."""
    sampler = getattr(_tracer, "sampler", None)
    if sampler is None:
        return True
    decision = sampler.should_sample(_ROOT, trace_id, name, SpanKind.SERVER)
    return bool(decision.decision.is_sampled())


def _format(span_context: SpanContext) -> str:
    trace_id, span_id, _, flags = span_context[:4]  # its fields, in order: no properties
    return _traceparent(trace_id, span_id, flags)


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """W3C's version-00 `traceparent` of these ids and flags: their bytes' hex, which costs
    half what format specs (`:032x`) do."""
    return f"00-{trace_id.to_bytes(16).hex()}-{span_id.to_bytes(8).hex()}-{_HEX_BYTE[flags]}"


_HEX_BYTE = tuple(f"{flags:02x}" for flags in range(256))


def _extract(traceparent: str, tracestate: str | None) -> SpanContext | None:
    """The span context a caller's W3C headers carry; None for a malformed one.

    The common case, a version-00 `traceparent` and no `tracestate`, is parsed here: the
    SDK's propagator costs several times as much, on every request of every trace.
    """
    match = _TRACEPARENT.match(traceparent)
    if match is None or tracestate is not None:
        carrier = {"traceparent": traceparent}
        if tracestate is not None:
            carrier["tracestate"] = tracestate
        found = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
        return found if found.is_valid else None
    return _remote(match)


def _remote(traceparent: re.Match[str]) -> SpanContext | None:
    """The span context of a version-00 `traceparent` (matched by `_TRACEPARENT`); None
    for its invalid all-zero ids."""
    trace_id, span_id = int(traceparent[1], 16), int(traceparent[2], 16)
    if not trace_id or not span_id:
        return None
    # Made as SpanContext's constructor would, without checking the ids' ranges again:
    # the pattern allows no other.
    flags = _TRACE_FLAGS[int(traceparent[3], 16)]
    return _new_tuple(SpanContext, (trace_id, span_id, True, flags, DEFAULT_TRACE_STATE, True))


_new_tuple = tuple.__new__
_TRACE_FLAGS = tuple(TraceFlags(flags) for flags in range(256))
# The last hex digit of the flags of a sampled trace (bit 0 set), and the invalid ids.
_SAMPLED_DIGITS = frozenset("13579bdf")
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16


def http_server_span(
    method: str, traceparent: bytes | None = None, tracestate: bytes | None = None
) -> Started | None:
    """The span of an HTTP request (current until ended), continuing the client's
    `traceparent` (with its `tracestate`, the headers as they came); None when tracing
    is off."""
    if _tracer is None:
        return None
    return _server_span(
        method,
        None if traceparent is None else traceparent.decode("latin-1"),
        None if tracestate is None else tracestate.decode("latin-1"),
        _HTTP_METHODS.get(method) or {"http.request.method": method},
    )


# The attributes a request's span starts with, made once for the usual methods (a span
# copies what it is given).
_HTTP_METHODS = {
    method: {"http.request.method": method}
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


def end_http_server_span(active: Started, route: str | None, status: int) -> None:
    if isinstance(active, Token):
        _restore(active)
        return
    span = active.span
    if span is not None and span.is_recording():
        if route is not None:
            span.update_name(f"{span.name} {route}")  # type: ignore[attr-defined]
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
    active.end()


def grpc_server_span(method: str, metadata: Any) -> Started | None:
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
    if traceparent is not None and tracestate is None:
        # The common case, parsed once here: a caller's unsampled trace goes on as it
        # came, a sampled one is continued.
        match = _TRACEPARENT.match(traceparent)
        if match is not None and match[1] != _NO_TRACE and match[2] != _NO_SPAN:
            if match[3][1] in _SAMPLED_DIGITS:
                name, attributes = _rpc_span_of(method, None)
                remote = _remote(match)
                return ActiveSpan(_start(name, remote, SpanKind.SERVER, attributes))
            if _parent_based:
                return ActiveSpan(None, Passed(traceparent, None))
    name, attributes = _rpc_span_of(method, None)
    return _server_span(name, traceparent, tracestate, attributes)


def _rpc_span_of(method: str, target: str | None) -> tuple[str, Mapping[str, Any]]:
    """The name and attributes of a call's span: a server's (`target` None) or a
    client's of `target`; remembered, a process has a few dozen methods and targets."""
    named = _rpc_spans.get((method, target))
    if named is None:
        full = method.lstrip("/")
        service, _, name = full.partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        if target is not None:
            attributes["server.address"] = target
        named = _rpc_spans[method, target] = (full, attributes)
    return named


_rpc_spans: dict[tuple[str, str | None], tuple[str, Mapping[str, Any]]] = {}


def end_grpc_server_span(active: Started, code: grpc.StatusCode) -> None:
    if isinstance(active, Token):
        _restore(active)
        return
    span = active.span
    if span is not None and span.is_recording():
        number, server_error = _CODES[id(code)]
        span.set_attribute("rpc.grpc.status_code", number)
        if server_error:
            span.set_status(Status(StatusCode.ERROR, code.name))
    active.end()


def grpc_client_span(method: str, target: str, metadata: list[tuple[str, str]]) -> Span | None:
    """The span of one call to another service, a child of the current one; its
    context is added to `metadata`. None when tracing is off, and in an unsampled
    trace, whose context is added as it is."""
    if _tracer is None:
        return None
    active = _current.get()
    if isinstance(active, int):
        _inject(metadata, _begun_here(active), None)
        return None
    if isinstance(active, Passed):
        _inject(metadata, active.traceparent, active.tracestate)
        return None
    name, attributes = _rpc_span_of(method, target)
    if isinstance(active, FanIn):
        span = active.start(name, SpanKind.CLIENT, attributes)
    else:
        current = _context_of(active)
        if _unsampled(current):
            _inject(metadata, _format(current), _tracestate(current))
            return None
        span = _start(name, current if current.is_valid else None, SpanKind.CLIENT, attributes)
    span_context = span.get_span_context()
    if span_context.is_valid:
        _inject(metadata, _format(span_context), _tracestate(span_context))
    return span


def _tracestate(span_context: SpanContext) -> str | None:
    state = span_context.trace_state
    return (state.to_header() or None) if state else None


def _inject(metadata: list[tuple[str, str]], traceparent: str, tracestate: str | None) -> None:
    # No header may be sent twice: ours replaces any the caller passed on.
    for key, _ in metadata:
        if key in TRACE_HEADERS:
            metadata[:] = [pair for pair in metadata if pair[0] not in TRACE_HEADERS]
            break
    metadata.append(("traceparent", traceparent))
    if tracestate:
        metadata.append(("tracestate", tracestate))


def end_grpc_client_span(span: Span, code: grpc.StatusCode) -> None:
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", _CODES[id(code)][0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


def fan_in(name: str, size: int, links: Sequence[SpanContext]) -> AbstractContextManager[None]:
    """The block does the shared work of a batch of `size` requests, among them those
    of these spans (`current_link`): where one is sampled, the spans made directly in it
    link to each sampled one, children of the first (`FanIn`). No span of its own: its
    calls and statements are the work."""
    sampled = [link for link in links if not _unsampled(link)]
    if _tracer is None or not sampled:
        return _OUTSIDE
    # The batch runs in the context of the request that started it, which may be of an
    # unsampled trace: the batch's own calls are of the sampled requests' trace.
    return ActiveSpan(None, FanIn(name, size, sampled))


_OUTSIDE = nullcontext()


@contextmanager
def _made_current(made: Span) -> Iterator[Span]:
    """`made` current inside the block, and ended after it. An exception sets its
    status to its type, not its message: that may quote what a client sent."""
    active = ActiveSpan(made)
    try:
        yield made
    except BaseException as exc:
        if made.is_recording():
            made.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        active.end()


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """An internal span, current inside the block; None when tracing is off or the
    trace is unsampled."""
    active = _current.get() if _tracer is not None else None
    if _tracer is None or isinstance(active, _UNSAMPLED_KINDS):
        yield None
        return
    if isinstance(active, FanIn):
        made = active.start(name, SpanKind.INTERNAL, attributes)
    else:
        parent = _context_of(active)
        if _unsampled(parent):
            yield None
            return
        made = _start(name, parent if parent.is_valid else None, SpanKind.INTERNAL, attributes)
    with _made_current(made):
        yield made


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
    began = partial(_statement_began, attributes, {})
    event.listen(sync, "before_cursor_execute", began)
    event.listen(sync, "after_cursor_execute", _statement_ended)
    event.listen(sync, "handle_error", _statement_failed)


def _statement_began(
    attributes: Mapping[str, str],
    known: dict[str, tuple[str, Mapping[str, Any]]],
    _connection: Any,
    _cursor: Any,
    statement: str,
    _parameters: Any,
    context: Any,
    _executemany: bool,
) -> None:
    if _tracer is None:
        return
    active = _current.get()
    if isinstance(active, _UNSAMPLED_KINDS):
        return
    if not isinstance(active, FanIn):
        if active is None and _mirror:
            active = trace.get_current_span()
        if active is None or not active.is_recording():
            return
    named = known.get(statement)
    if named is None:
        named = _statement_span_of(attributes, statement)
        if len(known) >= _STATEMENTS_KNOWN:
            known.clear()
        known[statement] = named
    name, span_attributes = named
    if isinstance(active, FanIn):
        context._tandem_span = active.start(name, SpanKind.CLIENT, span_attributes)
    else:
        parent = active.get_span_context()
        context._tandem_span = _start(name, parent, SpanKind.CLIENT, span_attributes)


# Statements whose span's name and attributes an engine remembers (then forgets them all):
# a service runs a few dozen, the same strings from SQLAlchemy's compiled cache.
_STATEMENTS_KNOWN = 1024


def _statement_span_of(
    attributes: Mapping[str, str], statement: str
) -> tuple[str, Mapping[str, Any]]:
    operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
    name = f"{operation} {attributes['db.namespace']}".rstrip()
    return name, {**attributes, "db.operation.name": operation, "db.query.text": statement}


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
