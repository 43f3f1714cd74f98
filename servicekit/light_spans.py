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

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)


class LightSpan(Span, ReadableSpan):
    """A recording span of a sampled trace, handed to the processor as it is when it
    ends (as the SDK's own span class, it is its readable form too)."""

    def __init__(
        self,
        maker: Maker,
        name: str,
        context: SpanContext,
        *,
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
        self._status = _UNSET
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
        self._maker.processor.on_end(self)


class Maker:
    """Makes `LightSpan`s for what an SDK tracer would make them for."""

    def __init__(self, tracer: Any, generate_span_id: Any) -> None:
        self.processor = tracer.span_processor
        self.resource = tracer.resource
        self.scope = getattr(tracer, "_instrumentation_scope", None)
        self._span_id = generate_span_id

    def start(
        self,
        name: str,
        trace_id: int,
        parent: SpanContext | None,
        *,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
        links: Sequence[Link] = (),
    ) -> LightSpan:
        """A span of the sampled trace `trace_id`, under `parent` (None: its root, of a
        random trace id)."""
        if parent is None:
            flags, state = _SAMPLED_RANDOM, None
        else:
            random = parent.trace_flags & TraceFlags.RANDOM_TRACE_ID
            flags, state = (_SAMPLED_RANDOM if random else _SAMPLED), parent.trace_state
        context = SpanContext(
            trace_id, self._span_id(), is_remote=False, trace_flags=flags, trace_state=state
        )
        span = LightSpan(
            self, name, context, parent=parent, kind=kind, attributes=attributes, links=links
        )
        self.processor.on_start(span, None)
        return span
