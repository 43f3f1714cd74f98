"""The spans Tandem makes itself, recorded flat as they happen.

A span of ours is one list of its fields (`Record`), made at its start and finished at
its end by servicekit.telemetry's helpers, with no call into the SDK. What every span of
one kind shares (its name, kind, and the attributes fixed where it is made: a method, a
statement, a route and status) is one `Shape`, which no span copies. An ended record goes
as it is to the queue of the SDK's batching processor when that processor's exporter reads
records (servicekit.otlp_export, which encodes a shape once), and the export thread does
the rest in bulk: per span, the serving thread makes a list and stores a few fields. The
SDK's own path runs many more distinct calls there (its `Tracer.start_span` asks the
sampler, copies each attribute into a locked bounded mapping, and the finished span is
built anew), and code that runs once a batch or for one request in ten runs cold: what
it costs is mostly its cache misses. For any other processor (the tests' in-memory one)
an ended record is built into the SDK's `ReadableSpan` first (`built`).

The SDK is imported only where a recorder needs it: servicekit.telemetry imports this
module in any process, tracing on or off.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util import types

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

# A record's fields, by position. The first six are a SpanContext's, in its order: where a
# span context is read by position (a parent, a link), a record serves as well.
TRACE_ID: Final = 0
SPAN_ID: Final = 1
IS_REMOTE: Final = 2
FLAGS: Final = 3
STATE: Final = 4
IS_VALID: Final = 5
SHAPE: Final = 6
PARENT: Final = 7
START: Final = 8
END: Final = 9
STATUS: Final = 10
EXTRA: Final = 11
LINKS: Final = 12
RECORDER: Final = 13
TOKEN: Final = 14
Record: TypeAlias = list[Any]
"""A span of ours: [trace id, span id, False (not remote), flags (TraceFlags), trace state,
True (valid), shape, parent (a record, a SpanContext, or None for a root), start (ns), end
(ns, 0 while it runs), status (None: unset), extra attributes (a mapping, or None), links
(records, span contexts or `Link`s), the `Recorder` it reports to, and while it is a
request's current span, the token that restores the context before it (servicekit.
telemetry)]."""
# What a parent or a link is: a record, or a span context (a caller's, a remote one).
Context: TypeAlias = "Record | SpanContext"


class Shape:
    """What the spans of one kind share: their name, kind and fixed attributes, and the
    encoding of those that the exporter makes once (`encoded`)."""

    __slots__ = ("attributes", "encoded", "kind", "name")

    def __init__(self, name: str, kind: SpanKind, attributes: Mapping[str, Any]) -> None:
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.encoded: bytes | None = None

    def __repr__(self) -> str:
        return f"Shape({self.name!r}, {self.kind}, {dict(self.attributes)!r})"


SAMPLED = TraceFlags(TraceFlags.SAMPLED)
RANDOM = TraceFlags(TraceFlags.RANDOM_TRACE_ID)


class Recorder:
    """Makes the records of a tracer's spans, and ends them to its provider's processors.

    An ended record goes straight to the provider's processors, not through the SDK's
    multi-processor: to a batching processor's queue (`_ending`) when it is the only one
    and its exporter reads records, else built (`built`) to `on_end`. Processors whose
    `on_start` does nothing (the SDK's exporting ones) are not called at a start. Both
    read again whenever the provider's list of processors changes.
    """

    def __init__(self, tracer: Any, span_ids: Any) -> None:
        self._processor = tracer.span_processor
        self.resource = tracer.resource
        self.scope = getattr(tracer, "_instrumentation_scope", None)
        self.span_id = span_ids
        self._processors: object = None
        self.on_start: tuple[Any, ...] = ()
        self.end: Any = self._built_end
        self._refresh()

    def _refresh(self) -> None:
        from opentelemetry.sdk.trace import SpanProcessor  # noqa: PLC0415 - see the module
        from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
            BatchSpanProcessor,
            SimpleSpanProcessor,
        )

        idle_starts = {
            SpanProcessor.on_start,
            BatchSpanProcessor.on_start,
            SimpleSpanProcessor.on_start,
        }
        processors = getattr(self._processor, "_span_processors", None)
        self._processors = processors
        if processors is None:  # not the SDK's multi-processor: it is called as it is
            self.on_start, self.end = (self._processor.on_start,), self._built_end
            return
        # The SDK's exporting processors do nothing at a start.
        self.on_start = tuple(p.on_start for p in processors if type(p).on_start not in idle_starts)
        ending = _ending(processors[0], BatchSpanProcessor) if len(processors) == 1 else None
        self.end = ending or self._built_end

    def retire(self) -> None:
        """Its tracer is no longer in use (its provider may be shut down next): records
        that end from now on go through the processors' own `on_end`, which drop them
        with their log and count once shut down, not into a queue no thread reads."""
        self.end = self._built_end

    def _built_end(self, record: Record) -> None:
        self._processor.on_end(built(record))

    def start(  # noqa: PLR0917 - positional: called for every span
        self,
        shape: Shape,
        trace_id: int,
        flags: TraceFlags,
        state: Any,
        parent: Context | None,
        links: Sequence[Context | Link] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> Record:
        """A running span of `shape` in trace `trace_id` under `parent` (None: a root)."""
        record = [
            trace_id, self.span_id(), False, flags, state, True,
            shape, parent, time_ns(), 0, None, extra, links, self, None,
        ]  # fmt: skip
        if getattr(self._processor, "_span_processors", None) is not self._processors:
            self._refresh()
        if self.on_start:
            started = RecordSpan(record)
            for on_start in self.on_start:
                on_start(started, None)
        return record


def end(record: Record, end_time: int | None = None) -> None:
    """Ends `record` (once): a sampled one goes to its recorder's processors."""
    if record[END]:
        return
    record[END] = end_time or time_ns()
    if record[FLAGS] & SAMPLED:
        record[RECORDER].end(record)


def recording(record: Record) -> bool:
    """Whether `record` is of a sampled trace, and running."""
    return not record[END] and bool(record[FLAGS] & SAMPLED)


def span_context(context: Context) -> SpanContext:
    """`context` as a SpanContext (its first six fields, as they are)."""
    if type(context) is SpanContext:
        return context
    return _new_tuple(SpanContext, context[:SHAPE])


_new_tuple = tuple.__new__


def attributes_of(record: Record) -> Mapping[str, Any]:
    """`record`'s attributes: its shape's, and over them its extra ones."""
    fixed, extra = record[SHAPE].attributes, record[EXTRA]
    return {**fixed, **extra} if extra else fixed


def built(record: Record) -> ReadableSpan:
    """The SDK's readable form of an ended `record`, for processors that read those."""
    from opentelemetry.sdk.trace import ReadableSpan  # noqa: PLC0415 - see the module

    shape: Shape = record[SHAPE]
    parent = record[PARENT]
    recorder: Recorder = record[RECORDER]
    return ReadableSpan(
        name=shape.name,
        context=span_context(record),
        parent=None if parent is None else span_context(parent),
        resource=recorder.resource,
        attributes=MappingProxyType(dict(attributes_of(record))),
        links=tuple(as_link(link) for link in record[LINKS]),
        kind=shape.kind,
        status=record[STATUS] or UNSET_STATUS,
        start_time=record[START],
        end_time=record[END],
        instrumentation_scope=recorder.scope,
    )


def as_link(link: Context | Link) -> Link:
    return link if type(link) is Link else Link(span_context(link))  # type: ignore[arg-type]


UNSET_STATUS = Status(StatusCode.UNSET)


class RecordSpan(Span):
    """A record as OpenTelemetry's `Span`, for code that sets what it learns on a span of
    ours (servicekit.telemetry.span), and as the SDK's running span reads, for a
    processor's `on_start`. Events are not recorded: no code of Tandem's adds any, and a
    record has no place for them."""

    def __init__(self, record: Record) -> None:
        self.record = record

    @property
    def name(self) -> str:
        return str(self.record[SHAPE].name)

    @property
    def kind(self) -> SpanKind:
        return self.record[SHAPE].kind  # type: ignore[no-any-return]

    @property
    def attributes(self) -> Mapping[str, Any]:
        return MappingProxyType(dict(attributes_of(self.record)))

    @property
    def context(self) -> SpanContext:
        return span_context(self.record)

    @property
    def parent(self) -> SpanContext | None:
        parent = self.record[PARENT]
        return None if parent is None else span_context(parent)

    @property
    def start_time(self) -> int:
        return self.record[START]  # type: ignore[no-any-return]

    def get_span_context(self) -> SpanContext:
        return span_context(self.record)

    def is_recording(self) -> bool:
        return recording(self.record)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        self.set_attributes({key: value})

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        record = self.record
        if not record[END]:
            record[EXTRA] = {**(record[EXTRA] or {}), **attributes}

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        """Not recorded (see the class)."""

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        record = self.record
        if not record[END] and context.is_valid:
            record[LINKS] = (*record[LINKS], Link(context, attributes))

    def update_name(self, name: str) -> None:
        record = self.record
        if not record[END]:
            shape = record[SHAPE]
            record[SHAPE] = Shape(name, shape.kind, shape.attributes)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        record = self.record
        if record[END]:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        # As the SDK: an OK is final, and an UNSET changes nothing.
        now = record[STATUS] or UNSET_STATUS
        if now.status_code is not StatusCode.OK and status.status_code is not StatusCode.UNSET:
            record[STATUS] = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Not recorded: an exception's message may quote what a client sent."""

    def end(self, end_time: int | None = None) -> None:
        end(self.record, end_time)


def _ending(processor: Any, batching: type) -> Any:
    """What takes an ended record to `processor` alone, when it reads records as they
    are: the SDK's batching processor (`batching`) whose exporter does (`reads_records`),
    straight into its queue (`_enqueue`). None for any other."""
    if type(processor) is not batching:
        return None
    if not getattr(getattr(processor, "span_exporter", None), "reads_records", False):
        return None
    batch = getattr(processor, "_batch_processor", None)
    queue = getattr(batch, "_queue", None)
    if type(queue) is not deque or queue.maxlen is None:
        return getattr(batch, "emit", None)
    return _enqueue(batch, queue, batch._max_export_batch_size)  # type: ignore[union-attr]


def _enqueue(batch: Any, queue: deque[Any], batch_size: int) -> Callable[[Record], None]:
    """What puts a record in `batch`'s `queue` (the SDK's `BatchProcessor`'s, from which its
    thread exports) as its `emit` would, but for what an ending span need not pay there:
    a record is sampled already (its `on_end` asks through three properties), and `emit`
    asks the process's id (a system call) on every span to notice a fork, which the
    processor's own after-fork hook handles (it clears this same queue); nor whether the
    processor is shut down: a recorder is retired before that (`Recorder.retire`). Spans
    make up their cost mostly in cache misses (they are rare: one request in ten, one
    coalesced call's), so the fewer objects touched, the better."""

    # One comparison a span: with this many queued, the record makes a batch (or more).
    filling = batch_size - 1

    def enqueue(record: Record) -> None:
        if len(queue) >= filling:
            _crowded(batch, queue, record)
        else:
            queue.appendleft(record)

    return enqueue


def _crowded(batch: Any, queue: deque[Any], record: Record) -> None:
    """`record` queued where it makes a batch ready (or more), as `emit` queues it: a full
    queue drops its oldest span, with the processor's warning and count; then the
    processor's thread is woken."""
    if len(queue) == queue.maxlen:
        _sdk_log.warning("Queue full, dropping %s.", batch._exporting)
        batch._metrics.drop_items(1)
    queue.appendleft(record)
    awaken = batch._worker_awaken  # made anew after a fork: read here
    if not awaken.is_set():
        awaken.set()


# The batching processor's own logger: its warnings read as they would from `emit`.
_sdk_log = logging.getLogger("opentelemetry.sdk._shared_internal")
