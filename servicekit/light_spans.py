"""The spans Tandem makes itself in a sampled trace, without the SDK's per-span work.

The SDK's `Tracer.start_span` asks the sampler again for every span, validates and
copies each attribute into a locked bounded mapping, and builds the finished span anew
at its end: about 30 µs a span, here 5 to 7 spans a request. Ours carry only what
the code that makes them sets (a handful of str and int attributes it controls), and
reach the SDK's span processors, so its batching and export, as a `ReadableSpan`, as the
SDK's own do.

Used only while the sampler is one whose decisions this can take for it
(servicekit.telemetry: parent-based, with the default always-on for sampled parents):
then every span below a sampled one is sampled, and no sampler need be asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util import types

# A new span's status (the encoder knows it by identity).
UNSET_STATUS = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)


class LightSpan(Span, ReadableSpan):
    """A recording span of a sampled trace, handed to the processor as it is when it
    ends (as the SDK's own span class, it is its readable form too)."""

    def __init__(  # noqa: PLR0917 - positional: made for every span
        self,
        maker: Maker,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
        links: Sequence[Link],
    ) -> None:
        # ReadableSpan's fields, set here as its __init__ would (it costs a call with
        # thirteen arguments, on every span).
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = None
        self._instrumentation_scope = maker.scope
        self._parent = parent
        self._start_time = time_ns()
        self._end_time: int | None = None
        self._attributes = dict(attributes) if attributes else {}
        self._events: Sequence[Event] = ()
        self._links = tuple(links)
        self._resource = maker.resource
        self._status = UNSET_STATUS
        self._maker = maker

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value] # always given

    def is_recording(self) -> bool:
        return self._end_time is None

    # Its attributes are a dict of its own (made in __init__): changed in place.
    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end_time is None:
            self._attributes[key] = value  # type: ignore[index]

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)  # type: ignore[union-attr]

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is None:
            self._events = (*self._events, Event(name, attributes, timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end_time is None and context.is_valid:
            self._links = (*self._links, Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        # As the SDK: an OK is final, and an UNSET changes nothing.
        if self._status.status_code is not StatusCode.OK and status.status_code is not (
            StatusCode.UNSET
        ):
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Not recorded: an exception's message may quote what a client sent."""

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time or time_ns()
        self._maker.on_end(self)


class Maker:
    """Makes `LightSpan`s for what an SDK tracer would make them for.

    A span goes straight to the provider's processors, not through the SDK's
    multi-processor (a loop and a call more per span), and not at all to those whose
    `on_start` does nothing (the SDK's exporting processors), and to a batching one's
    queue (`_ending`): read again whenever the provider's list of processors changes.
    """

    def __init__(self, tracer: Any, generate_span_id: Any) -> None:
        self._processor = tracer.span_processor
        self.resource = tracer.resource
        self.scope = getattr(tracer, "_instrumentation_scope", None)
        self._span_id = generate_span_id
        self._processors: object = None
        self.on_start: tuple[Any, ...] = ()
        self.on_end: Any = self._processor.on_end
        self._refresh()

    def _refresh(self) -> None:
        processors = getattr(self._processor, "_span_processors", None)
        self._processors = processors
        if processors is None:  # not the SDK's multi-processor: it is called as it is
            self.on_start, self.on_end = (self._processor.on_start,), self._processor.on_end
            return
        self.on_start = tuple(p.on_start for p in processors if not _idle_start(p))
        self.on_end = _ending(processors[0]) if len(processors) == 1 else self._processor.on_end

    def start(  # noqa: PLR0917 - positional: called for every span
        self,
        name: str,
        trace_id: int,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
        links: Sequence[Link] = (),
    ) -> LightSpan:
        """A span of the sampled trace `trace_id`, under `parent` (None: its root, of a
        random trace id)."""
        if parent is None:
            flags, state = _SAMPLED_RANDOM, _NO_STATE
        else:
            random = parent[3] & TraceFlags.RANDOM_TRACE_ID  # trace_flags
            flags, state = (_SAMPLED_RANDOM if random else _SAMPLED), parent[4]  # trace_state
        # SpanContext's own constructor checks the ids' ranges: both are made valid here.
        context = _new_tuple(SpanContext, (trace_id, self._span_id(), False, flags, state, True))
        span = LightSpan(self, name, context, parent, kind, attributes, links)
        if getattr(self._processor, "_span_processors", None) is not self._processors:
            self._refresh()
        for on_start in self.on_start:
            on_start(span, None)
        return span


_new_tuple = tuple.__new__
_NO_STATE = DEFAULT_TRACE_STATE


def _ending(processor: SpanProcessor) -> Any:
    """What takes an ended span of ours to `processor`: for the SDK's batching processor,
    its queue's `emit` directly (its `on_end` first asks whether the span is sampled,
    through three properties, for every span: ours always are)."""
    if type(processor) is BatchSpanProcessor:
        emit = getattr(getattr(processor, "_batch_processor", None), "emit", None)
        if emit is not None:
            return emit
    return processor.on_end


def _idle_start(processor: SpanProcessor) -> bool:
    """Whether `processor`'s on_start is one of the SDK's that does nothing."""
    return type(processor).on_start in _IDLE_STARTS


_IDLE_STARTS = frozenset(
    {SpanProcessor.on_start, BatchSpanProcessor.on_start, SimpleSpanProcessor.on_start}
)
