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
Each is recorded flat (servicekit.span_records: a list of its fields, its name, kind and
fixed attributes a shape shared by its kind), not made by the SDK's tracer.
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
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
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

from servicekit.span_records import (
    END,
    FLAGS,
    IS_VALID,
    RANDOM,
    SAMPLED,
    SHAPE,
    SPAN_ID,
    STATE,
    STATUS,
    TOKEN,
    TRACE_ID,
    Context,
    Record,
    RecordSpan,
    Shape,
    as_link,
    recording,
    span_context,
)
from servicekit.span_records import end as end_record

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from servicekit.span_records import Recorder

log = logging.getLogger("servicekit.telemetry")

_tracer: trace.Tracer | None = None
# Whether spans below an unsampled span are dropped (a parent-based sampler): then none
# is made there.
_parent_based = True
# What `_server_span` compares a new trace id with, when it can (`_bound_of`).
_root_bound: int | None = None
# Whether a new trace's sampling is that comparison (parent-based, with a bound).
_roots_by_bound = False
# Whether the sampler's decisions are taken here (a parent-based one whose new traces are
# decided by `_root_bound`, and whose spans below a sampled one are all sampled): else it
# is asked for each span (`_decided`).
_decides_here = True
# What records the spans (span_records), while tracing is on.
_recorder: Recorder | None = None
# Whether code in this process makes spans through OpenTelemetry's API itself (the ai
# service's anthropic SDK): then each request's span, or its unsampled trace, is made
# current in OpenTelemetry's context too, and a span current there is seen here. Elsewhere
# Tandem's own context variable (`_current`) is all: OpenTelemetry's context API costs
# several calls and objects per request.
_mirror = True
TRACE_ID_LIMIT = (1 << 64) - 1
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
# Each status code's number, and the status of a server's and of a client's span that
# ended so (None: unset), by identity: an Enum member hashes, and reads its value, in
# Python code.
_CODES = {
    id(code): (
        code.value[0],
        Status(StatusCode.ERROR, code.name) if code in _SERVER_ERRORS else None,
        None if code is grpc.StatusCode.OK else Status(StatusCode.ERROR, code.name),
    )
    for code in grpc.StatusCode
}
_ERROR = Status(StatusCode.ERROR)

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
    """`tracer`: the SDK's (its sampler, resource and processors), or None."""
    global _tracer, _parent_based, _root_bound, _roots_by_bound, _decides_here, _recorder, _mirror  # noqa: PLW0603
    _tracer = tracer
    _parent_based = parent_based
    _mirror = mirror
    if _recorder is not None:  # spans still running end through the SDK's own way
        _recorder.retire()
    sampler = getattr(tracer, "sampler", None)
    _root_bound = _bound_of(sampler)
    _roots_by_bound = parent_based and _root_bound is not None
    _decides_here = _root_bound is not None and _keeps_sampled_children(sampler)
    _recorder = None
    if tracer is not None:
        from servicekit.span_records import Recorder  # noqa: PLC0415 - loads the SDK

        _recorder = Recorder(tracer, _span_ids(tracer.id_generator))  # type: ignore[attr-defined]


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
    the default does: then spans need not ask it."""
    from opentelemetry.sdk.trace import sampling  # noqa: PLC0415 - loaded with the SDK

    return (
        getattr(sampler, "_local_parent_sampled", None) is sampling.ALWAYS_ON
        and getattr(sampler, "_remote_parent_sampled", None) is sampling.ALWAYS_ON
    )


def _span_ids(generator: Any) -> Callable[[], int]:
    """What makes a span id: with the SDK's random generator, its rule called directly
    (two calls fewer per span)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator  # noqa: PLC0415

    return _random_span_id if type(generator) is RandomIdGenerator else generator.generate_span_id


def _random_span_id() -> int:
    """RandomIdGenerator's rule: 64 random bits, never all zero."""
    span_id = getrandbits(64)
    while not span_id:
        span_id = getrandbits(64)
    return span_id


def _unsampled(context: Context) -> bool:
    """Whether no span may be made under `context` (a span context or a record, read by
    position): it is of a trace the sampler dropped, and the sampler drops what is below."""
    return _parent_based and context[IS_VALID] and not context[FLAGS] & SAMPLED


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
    context = current.parent if isinstance(current, FanIn) else _context_of(current)
    if context is None:
        return None
    return f"{context[TRACE_ID]:032x}", f"{context[SPAN_ID]:016x}"


def current_link() -> Context | None:
    """The current span (a record of ours, or a span context), to link a shared piece of
    work back to it; None outside a trace, and in an unsampled one (no span of it is
    ever recorded)."""
    if _tracer is None:
        return None
    current = _current.get()
    if type(current) is list:  # a request's span: most often, at once
        return current
    if isinstance(current, _UNSAMPLED_KINDS):
        return None
    if isinstance(current, FanIn):
        return current.parent
    return _context_of(None)


def _context_of(current: Record | None) -> Context | None:
    """`current` (the current span of ours), or with none, the context of the span
    current in OpenTelemetry's context where that is looked at (`_mirror`); None for
    none valid."""
    if current is not None:
        return current
    if _mirror:
        found = trace.get_current_span().get_span_context()
        return found if found.is_valid else None
    return None


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
    with the batch's name and size as attributes. Current inside its block (`fan_in`):
    it makes itself current, and restores what was (no object of its own for that: a
    batch's tracing runs for a coalesced call in a few, where its code and data are
    cold, and each object touched there is a cache miss or more)."""

    __slots__ = ("_otel_token", "_token", "attributes", "links", "parent")

    def __init__(self, name: str, size: int, links: Sequence[Context]) -> None:
        self.parent = links[0]
        self.links = links
        self.attributes = {"tandem.batch": name, "tandem.batch.size": size}

    def __enter__(self) -> None:
        # The batch runs in the context of the request that started it, which may be of
        # an unsampled trace: the batch's own calls are of the sampled requests' trace.
        self._token = _current.set(self)
        self._otel_token = _mirrored(self.parent) if _mirror else None

    def __exit__(self, *_: object) -> None:
        _reset(self._token, self._otel_token)

    def start(self, shape: Shape) -> Record:
        """A span of the batch's work: the batch's attributes added to its shape's."""
        return _start(shape, self.parent, self.links, self.attributes)


# The trace of the request running in this context, for the helpers below: a span of
# ours (a record), unsampled a `Passed` (the caller's) or an int (the trace id of one
# begun here, `_begun_here`), a `FanIn` (a batch's shared work), or None (outside any
# trace, or where `_mirror`, see OpenTelemetry's context).
_Current: TypeAlias = "Record | Passed | FanIn | int | None"
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


def _mirrored(context: Context | None) -> Token[otel_context.Context]:
    """OpenTelemetry's current context made `context`'s span (an unsampled trace's where
    None), for code that makes spans through the API itself; the token for `_reset`."""
    if context is None:
        return otel_context.attach(_UNSAMPLED)
    span = NonRecordingSpan(span_context(context))
    return otel_context.attach(trace.set_span_in_context(span, _ROOT))


def _reset(token: Token[_Current], otel_token: Token[otel_context.Context] | None) -> None:
    """Our context and OpenTelemetry's (None where `_mirrored` did not change it) as they
    were before."""
    _restore(token)
    if otel_token is not None:
        otel_context.detach(otel_token)


# What a request's start returns for its end: where nothing mirrors the context, its
# span's record (which holds the token that restores the context) or in an unsampled
# trace (a caller's, or one begun here), the token alone (no object of ours per request,
# for most requests); else an `ActiveSpan`.
Started: TypeAlias = "Record | ActiveSpan | Token[_Current]"


def _entered(record: Record) -> Started:
    """`record` current, until the request's end (`_left`)."""
    if _mirror:
        return ActiveSpan(record)
    record[TOKEN] = _current.set(record)
    return record


def _left(started: Record | ActiveSpan) -> None:
    """The end of what `_entered` (or an `ActiveSpan`) made current."""
    if type(started) is list:
        _restore(started[TOKEN])
        end_record(started)
    else:
        started.end()  # type: ignore[union-attr]


class ActiveSpan:
    """A request's span, or None with what is current instead (the unsampled trace's
    `Passed` or trace id), current until `end`, which restores the context it
    replaced."""

    __slots__ = ("_otel_token", "_token", "span")

    def __init__(self, span: Record | None, other: Passed | int | None = None) -> None:
        self.span = span
        self._token = _current.set(span if span is not None else other)
        self._otel_token = _mirrored(span) if _mirror else None

    def end(self) -> None:
        _reset(self._token, self._otel_token)
        if self.span is not None:
            end_record(self.span)


def _server_span(shape: Shape, traceparent: str | None, tracestate: str | None) -> Started:
    remote = None if traceparent is None else _extract(traceparent, tracestate)
    trace_id = None
    if _parent_based:
        if remote is not None:
            passed = _passed_on(remote, traceparent, tracestate)
            if passed is not None:
                return ActiveSpan(None, passed) if _mirror else _current.set(passed)
        else:
            # A new trace, of a random trace id (so an unsampled one's flags say so, W3C's
            # random-trace-id flag, as the SDK's would), kept if the sampler keeps that
            # id. Most requests take this way: in line, not through three more calls.
            trace_id = getrandbits(128) or 1
            if not (
                trace_id & TRACE_ID_LIMIT < _root_bound
                if _root_bound is not None
                else _sampler_keeps(trace_id, shape.name)
            ):
                return ActiveSpan(None, trace_id) if _mirror else _current.set(trace_id)
    return _entered(_start(shape, remote, trace_id=trace_id))


def _start(
    shape: Shape,
    parent: Context | None,
    links: Sequence[Context] = (),
    extra: Mapping[str, Any] | None = None,
    *,
    trace_id: int | None = None,
) -> Record:
    """A span of `shape` under `parent`, or for a root (`parent` None) of `trace_id` when
    the sampler has kept that id already; with `extra` attributes, linked to `links`."""
    recorder = _recorder
    assert recorder is not None
    if parent is not None and _decides_here:
        # Below a sampled span, sampled; below another, never recorded (its callers make
        # none there, but for a context that OpenTelemetry's holds).
        flags = _CHILD_FLAGS[parent[FLAGS]]
        return recorder.start(shape, parent[TRACE_ID], flags, parent[STATE], parent, links, extra)
    if parent is None and trace_id is not None:
        return recorder.start(shape, trace_id, _ROOT_FLAGS, DEFAULT_TRACE_STATE, None, links, extra)
    return _decided(recorder, shape, parent, links, extra)


# A span's flags under a parent with these (sampled or not, random trace id or not; no
# other flag is defined), and a sampled root's.
_CHILD_FLAGS = tuple(TraceFlags(flags & (SAMPLED | RANDOM)) for flags in range(256))
_ROOT_FLAGS = TraceFlags(SAMPLED | RANDOM)


def _decided(
    recorder: Recorder,
    shape: Shape,
    parent: Context | None,
    links: Sequence[Context],
    extra: Mapping[str, Any] | None,
) -> Record:
    """A span the sampler decides on: a new root's (of a random trace id), or under any
    sampler whose decisions are not taken here (it is asked, as the SDK's tracer would:
    its trace state goes on, and it may add attributes). An unsampled one is recorded
    for its context alone: it reaches no processor."""
    random: int
    if parent is None:
        trace_id, random, state = getrandbits(128) or 1, RANDOM, DEFAULT_TRACE_STATE
    else:
        trace_id, random, state = parent[TRACE_ID], parent[FLAGS] & RANDOM, parent[STATE]
    if _decides_here:  # a new root, under the parent-based default
        sampled = trace_id & TRACE_ID_LIMIT < _root_bound  # type: ignore[operator]
    else:
        context = _ROOT
        if parent is not None:
            context = trace.set_span_in_context(NonRecordingSpan(span_context(parent)), _ROOT)
        result = _tracer.sampler.should_sample(  # type: ignore[union-attr]
            context, trace_id, shape.name, shape.kind, shape.attributes, list(map(as_link, links))
        )
        sampled = result.decision.is_sampled()
        state = result.trace_state if result.trace_state is not None else state
        added = {
            key: value
            for key, value in (result.attributes or {}).items()
            if key not in shape.attributes
        }
        if added:
            extra = {**(extra or {}), **added}
    flags = TraceFlags((SAMPLED if sampled else 0) | random)
    return recorder.start(shape, trace_id, flags, state, parent, links, extra)


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


def _format(context: Context) -> str:
    trace_id, span_id, _, flags = context[:4]  # its fields, in order: no properties
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
    if traceparent is None and _roots_by_bound:
        # Most requests: a new trace, decided as `_server_span` decides it, here in line
        # (a call fewer: every request runs this, most of them unsampled).
        trace_id = getrandbits(128) or 1
        if trace_id & TRACE_ID_LIMIT >= _root_bound:  # type: ignore[operator]
            return ActiveSpan(None, trace_id) if _mirror else _current.set(trace_id)
        shape = _HTTP_METHODS.get(method) or _http_shape(method)
        return _entered(_start(shape, None, trace_id=trace_id))
    return _server_span(
        _HTTP_METHODS.get(method) or _http_shape(method),
        None if traceparent is None else traceparent.decode("latin-1"),
        None if tracestate is None else tracestate.decode("latin-1"),
    )


def _http_shape(method: str) -> Shape:
    return Shape(method, SpanKind.SERVER, {"http.request.method": method})


# The shape a request's span starts with, made once for the usual methods.
_HTTP_METHODS = {
    method: _http_shape(method)
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


def end_http_server_span(active: Started, route: str | None, status: int) -> None:
    if type(active) is Token:
        # `_restore`, in line: most requests end here.
        try:  # noqa: SIM105
            _current.reset(active)
        except ValueError:
            pass
        return
    record = active if type(active) is list else active.span  # type: ignore[union-attr]
    if record is not None and not record[END]:
        record[SHAPE] = _ended(record[SHAPE], route, status)
        if status >= 500:
            record[STATUS] = _ERROR
    _left(active)


def _ended(shape: Shape, route: str | None, status: int) -> Shape:
    """What the span of a request of `shape` is, ended on `route` (its template: None for
    none matched) with `status`; remembered, a process has a few dozen routes."""
    key = (shape, route, status)
    ended = _http_ended.get(key)
    if ended is None:
        name, attributes = shape.name, dict(shape.attributes)
        if route is not None:
            name = f"{name} {route}"
            attributes["http.route"] = route
        attributes["http.response.status_code"] = status
        ended = _remembered(_http_ended, key, Shape(name, shape.kind, attributes))
    return ended


_http_ended: dict[tuple[Shape, str | None, int], Shape] = {}
_Key = TypeVar("_Key")


def _remembered(cache: dict[_Key, Shape], key: _Key, shape: Shape) -> Shape:
    """`shape`, remembered in `cache` under `key`: at most `_SHAPES_KNOWN` of them, then all
    forgotten at once (a process makes its spans from a few dozen)."""
    if len(cache) >= _SHAPES_KNOWN:
        cache.clear()
    cache[key] = shape
    return shape


_SHAPES_KNOWN = 1024


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
                remote = _remote(match)
                return _entered(_start(_rpc_shape(method, None), remote))
            if _parent_based:
                passed = Passed(traceparent, None)
                return ActiveSpan(None, passed) if _mirror else _current.set(passed)
    return _server_span(_rpc_shape(method, None), traceparent, tracestate)


def _rpc_shape(method: str, target: str | None) -> Shape:
    """The shape of a call's span: a server's (`target` None) or a client's of `target`;
    remembered, a process has a few dozen methods and targets."""
    shape = _rpc_shapes.get((method, target))
    if shape is None:
        full = method.lstrip("/")
        service, _, name = full.partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        kind = SpanKind.SERVER
        if target is not None:
            attributes["server.address"] = target
            kind = SpanKind.CLIENT
        shape = _remembered(_rpc_shapes, (method, target), Shape(full, kind, attributes))
    return shape


_rpc_shapes: dict[tuple[str, str | None], Shape] = {}


def end_grpc_server_span(active: Started, code: grpc.StatusCode) -> None:
    if isinstance(active, Token):
        _restore(active)
        return
    record = active if type(active) is list else active.span  # type: ignore[union-attr]
    if record is not None and not record[END]:
        number, server_status, _ = _CODES[id(code)]
        record[SHAPE] = _answered(record[SHAPE], number)
        if server_status is not None:
            record[STATUS] = server_status
    _left(active)


def _answered(shape: Shape, code: int) -> Shape:
    """What the span of a call of `shape` is, answered with status `code`; remembered."""
    key = (shape, code)
    answered = _rpc_answered.get(key)
    if answered is None:
        attributes = {**shape.attributes, "rpc.grpc.status_code": code}
        answered = _remembered(_rpc_answered, key, Shape(shape.name, shape.kind, attributes))
    return answered


_rpc_answered: dict[tuple[Shape, int], Shape] = {}


def grpc_client_span(method: str, target: str, metadata: list[tuple[str, str]]) -> Record | None:
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
    shape = _rpc_shape(method, target)
    if isinstance(active, FanIn):
        record = active.start(shape)
    else:
        current = _context_of(active)
        if current is not None and _unsampled(current):
            _inject(metadata, _format(current), _tracestate(current))
            return None
        record = _start(shape, current)
    _inject(metadata, _format(record), _tracestate(record))
    return record


def _tracestate(context: Context) -> str | None:
    state = context[STATE]
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


def end_grpc_client_span(record: Record, code: grpc.StatusCode) -> None:
    if not record[END]:
        number, _, client_status = _CODES[id(code)]
        record[SHAPE] = _answered(record[SHAPE], number)
        if client_status is not None:
            record[STATUS] = client_status
    end_record(record)


def fan_in(name: str, size: int, links: Sequence[Context]) -> AbstractContextManager[None]:
    """The block does the shared work of a batch of `size` requests, among them those
    of these spans (`current_link`): where one is sampled, the spans made directly in it
    link to each sampled one, children of the first (`FanIn`). No span of its own: its
    calls and statements are the work."""
    if _tracer is None:
        return _OUTSIDE
    for link in links:
        if not link[FLAGS] & SAMPLED:  # rare: `current_link` gives sampled ones only
            links = [link for link in links if link[FLAGS] & SAMPLED]
            break
    return FanIn(name, size, links) if links else _OUTSIDE


_OUTSIDE = nullcontext()


@contextmanager
def _made_current(made: Record) -> Iterator[Span]:
    """`made` current inside the block (as a `Span` there), and ended after it. An
    exception sets its status to its type, not its message: that may quote what a
    client sent."""
    active = ActiveSpan(made)
    view = RecordSpan(made)
    try:
        yield view
    except BaseException as exc:
        view.set_status(Status(StatusCode.ERROR, type(exc).__name__))
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
    # Copied: a span's attributes are those given at its start.
    shape = Shape(name, SpanKind.INTERNAL, dict(attributes or {}))
    if isinstance(active, FanIn):
        made = active.start(shape)
    else:
        parent = _context_of(active)
        if parent is not None and _unsampled(parent):
            yield None
            return
        made = _start(shape, parent)
    with _made_current(made) as view:
        yield view


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
    known: dict[str, Shape],
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
    parent: Context | None = None
    if type(active) is list:
        if not recording(active):
            return
        parent = active
    elif active is None:
        found = trace.get_current_span() if _mirror else None
        if found is None or not found.is_recording():
            return
        parent = found.get_span_context()
    shape = known.get(statement)
    if shape is None:
        shape = _remembered(known, statement, _statement_shape(attributes, statement))
    if isinstance(active, FanIn):
        context._tandem_span = active.start(shape)
    else:
        context._tandem_span = _start(shape, parent)


def _statement_shape(attributes: Mapping[str, str], statement: str) -> Shape:
    """The shape of the spans of `statement` (an engine remembers a few dozen, the same
    strings from SQLAlchemy's compiled cache)."""
    operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
    name = f"{operation} {attributes['db.namespace']}".rstrip()
    return Shape(
        name,
        SpanKind.CLIENT,
        {**attributes, "db.operation.name": operation, "db.query.text": statement},
    )


def _statement_ended(
    _connection: Any, _cursor: Any, _statement: str, _parameters: Any, context: Any, _many: bool
) -> None:
    record = getattr(context, "_tandem_span", None)
    if record is not None:
        end_record(record)
        context._tandem_span = None


def _statement_failed(exception_context: Any) -> None:
    context = exception_context.execution_context
    record = getattr(context, "_tandem_span", None)
    if record is not None:
        if recording(record):
            # The error's type only: its text may quote the statement's parameters.
            error = type(exception_context.original_exception).__name__
            record[STATUS] = Status(StatusCode.ERROR, error)
        end_record(record)
        context._tandem_span = None
