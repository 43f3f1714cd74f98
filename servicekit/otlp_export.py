"""The OTLP/gRPC span exporter, with finished spans encoded in protobuf's wire format here.

`SpanExporter` is OpenTelemetry's (`OTEL_EXPORTER_OTLP_*`: endpoint, headers, TLS,
compression, timeout, retries), but for the bytes it sends. Its own encoder builds a
protobuf object per span, attribute and value, about 26 µs a span, on the export thread,
which holds the GIL meanwhile: time taken from the event loop of a process serving
requests. This writes the same bytes directly: the spans Tandem makes itself come as
records (servicekit.span_records), whose shape (name, kind and fixed attributes) it
encodes once, and the attributes of other spans that a process sends again and again are
remembered too. What it writes decodes to what
`opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans` makes
(tests/unit/test_otlp_export.py holds it to that).

Imported only when traces are exported (servicekit.telemetry.configure_tracing).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from servicekit.span_records import (
    IS_REMOTE,
    LINKS,
    RECORDER,
    SPAN_ID,
    Context,
    Record,
    attributes_of,
)

_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class SpanExporter(OTLPSpanExporter):
    """OpenTelemetry's OTLP/gRPC exporter, sending the bytes `encode` makes."""

    # Ended records reach it as they are (servicekit.span_records).
    reads_records = True

    def __init__(self) -> None:
        super().__init__()
        # The exporter makes its client again from `_stub` when it reconnects.
        self._stub = _TraceService
        self._client = _TraceService(self._channel)  # type: ignore[assignment,arg-type]

    def _translate_data(self, data: Sequence[ReadableSpan | Record]) -> bytes:  # type: ignore[override]
        return encode(data)


class _TraceService:
    """TraceService's client, for a request already serialised (and an answer that
    nobody reads: the exporter keeps only whether the call succeeded)."""

    def __init__(self, channel: grpc.Channel) -> None:
        # No serialiser: the request is bytes already, the answer is left as it came.
        self.Export = channel.unary_unary(_EXPORT, None, None)


# SpanFlags: the span's parent (or a link's span) says whether it is remote.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
# Encoded attributes remembered at most (then forgotten all at once).
_CACHE_LIMIT = 4096
_attributes: dict[tuple[int, str, type, Any], bytes] = {}
_names: dict[tuple[str, SpanKind], bytes] = {}
_pack_fixed32 = struct.Struct("<I").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack


def encode(spans: Sequence[ReadableSpan | Record]) -> bytes:
    """The request exporting `spans` (the SDK's, or records): grouped by resource, then
    instrumentation scope, in the order they first appear (as the exporter's encoder
    groups them)."""
    # Keyed by identity: a Resource hashes by serialising its attributes to JSON, and a
    # process has one resource and a scope per tracer.
    groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    # Records come in runs of one recorder's (a process has one): its group, found once.
    recorder: Any = None
    of_recorder: list[bytes] = []
    for span in spans:
        if isinstance(span, list):
            if span[RECORDER] is not recorder:
                recorder = span[RECORDER]
                of_recorder = _group(groups, recorder.resource, recorder.scope or None)
            of_recorder.append(_record(span))
        else:
            group = _group(groups, span.resource, span.instrumentation_scope or None)
            group.append(_field(2, _span(span)))
    out = []
    for resource, by_scope in groups.values():
        body = [_field(1, _kvs(1, resource.attributes))]
        for scope, encoded_spans in by_scope.values():
            scope_spans = [_field(1, _scope(scope)), *encoded_spans]
            if scope is not None and scope.schema_url:
                scope_spans.append(_field(3, scope.schema_url.encode()))
            body.append(_field(2, b"".join(scope_spans)))
        if resource.schema_url:
            body.append(_field(3, resource.schema_url.encode()))
        out.append(_field(1, b"".join(body)))
    return b"".join(out)


def _group(
    groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]], resource: Any, scope: Any
) -> list[bytes]:
    """The encoded spans of `resource` and `scope` so far, in `groups`."""
    of_resource = groups.get(id(resource))
    if of_resource is None:
        of_resource = groups[id(resource)] = (resource, {})
    of_scope = of_resource[1].get(id(scope))
    if of_scope is None:
        of_scope = of_resource[1][id(scope)] = (scope, [])
    return of_scope[1]


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    out = bytearray()
    if scope.name:
        out += _field(1, scope.name.encode())
    if scope.version:
        out += _field(2, scope.version.encode())
    out += _kvs(3, scope.attributes)
    return bytes(out)


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    out = bytearray(_ids(context.trace_id, context.span_id))
    if context.trace_state:
        out += _trace_state(context.trace_state)
    if parent is not None:
        out += _parent_id(0x22, 8, parent.span_id)
    out += _name_and_kind(span.name, span.kind)
    start, end = span.start_time, span.end_time
    if start:
        out += b"\x39"  # 7: start, fixed64
        out += _pack_fixed64(start)
    if end:
        out += b"\x41"  # 8: end, fixed64
        out += _pack_fixed64(end)
    out += _kvs(9, span.attributes)
    if span.dropped_attributes:
        out += b"\x50" + _varint(span.dropped_attributes)  # 10
    if span.events or span.dropped_events:
        out += _events(span)
    if span.links or span.dropped_links:
        out += _links(span)
    out += _status(span.status)
    # 16: flags, whether the parent is remote
    out += _REMOTE_FLAGS if parent is not None and parent.is_remote else _LOCAL_FLAGS
    return bytes(out)


def _record(record: Record) -> bytes:
    """A record as a whole field 2 of its ScopeSpans: its shape's name, kind and
    attributes encoded once (`Shape.encoded`), the rest packed (its ids and its parent's
    in one pack)."""
    trace_id, span_id, _, _, state, _, shape, parent, start, end, status, extra, links = record[
        : LINKS + 1
    ]
    if parent is None:
        out = [_ids(trace_id, span_id)]
    else:
        high, low = trace_id >> 64, trace_id & _LOW_64
        out = [_pack_child_ids(0x0A, 16, high, low, 0x12, 8, span_id, 0x22, 8, parent[SPAN_ID])]
    if state:
        out.append(_trace_state(state))
    if extra and not extra.keys().isdisjoint(shape.attributes):
        # An attribute set again: the span has its last value, where it was first set.
        out.append(_name_and_kind(shape.name, shape.kind) + _kvs(9, attributes_of(record)))
    else:
        encoded = shape.encoded
        if encoded is None:
            encoded = shape.encoded = _name_and_kind(shape.name, shape.kind) + _kvs(
                9, shape.attributes
            )
        out.append(encoded)
        if extra:
            out.append(_kvs(9, extra))
    out.append(_times(0x39, start, 0x41, end))  # fields 7, 8
    if links:
        out.extend(map(_link, links))
    out.append(_UNSET_STATUS if status is None else _status(status))
    out.append(_REMOTE_FLAGS if parent is not None and parent[IS_REMOTE] else _LOCAL_FLAGS)
    return _field(2, b"".join(out))


def _ids(trace_id: int, span_id: int) -> bytes:
    """Fields 1 and 2, the trace id and span id, of a span or a link (one pack: fixed
    sizes, so tags and lengths are constant)."""
    return _pack_ids(0x0A, 16, trace_id >> 64, trace_id & _LOW_64, 0x12, 8, span_id)


_pack_ids = struct.Struct(">BBQQBBQ").pack  # the trace id big-endian, in two halves
_pack_child_ids = struct.Struct(">BBQQBBQBBQ").pack  # and the parent's span id, field 4
_parent_id = struct.Struct(">BBQ").pack  # field 4, with its tag and length
_LOW_64 = (1 << 64) - 1
_UNSET_STATUS = b"\x7a\x00"


_times = struct.Struct("<BQBQ").pack


def _trace_state(state: Mapping[str, str]) -> bytes:
    """Field 3: the W3C tracestate header's form."""
    return _field(3, ",".join(f"{k}={v}" for k, v in state.items()).encode())


def _name_and_kind(name: str, kind: SpanKind) -> bytes:
    """Fields 5 (name) and 6 (kind: SpanKind's value + 1), remembered: a process names
    its spans from a few dozen templates."""
    encoded = _names.get((name, kind))
    if encoded is None:
        encoded = _field(5, name.encode()) + b"\x30" + _varint(kind.value + 1)
        if len(_names) >= _CACHE_LIMIT:
            _names.clear()
        _names[name, kind] = encoded
    return encoded


def _status(status: Status) -> bytes:
    """Field 15, the status (present even when unset, as the exporter's encoder has it)."""
    if status.status_code is StatusCode.UNSET and not status.description:
        return b"\x7a\x00"
    body = bytearray()
    if status.description:
        body += _field(2, status.description.encode())
    if status.status_code.value:
        body += b"\x18" + _varint(status.status_code.value)
    return _field(15, body)


def _events(span: ReadableSpan) -> bytes:
    out = bytearray()
    for event in span.events:
        body = bytearray()
        if event.timestamp:
            body += b"\x09" + _pack_fixed64(event.timestamp)
        if event.name:
            body += _field(2, event.name.encode())
        body += _kvs(3, event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        out += _field(11, body)
    if span.dropped_events:
        out += b"\x60" + _varint(span.dropped_events)  # 12
    return bytes(out)


def _links(span: ReadableSpan) -> bytes:
    out = b"".join(map(_link, span.links))
    if span.dropped_links:
        out += b"\x70" + _varint(span.dropped_links)  # 14
    return out


def _link(link: Link | Context) -> bytes:
    """Field 13, one link (a record's may be a record or a span context)."""
    if not isinstance(link, Link):
        trace_id, span_id, remote = link[:3]
        flags = _REMOTE_LINK if remote else _LOCAL_LINK  # 6
        return _field(13, _ids(trace_id, span_id) + flags)
    context = link.context
    body = [_ids(context.trace_id, context.span_id)]
    if link.attributes:
        body.append(_kvs(4, link.attributes))
    if link.dropped_attributes:
        body.append(b"\x28" + _varint(link.dropped_attributes))
    body.append(_REMOTE_LINK if context.is_remote else _LOCAL_LINK)  # 6: flags
    return _field(13, b"".join(body))


_LOCAL_FLAGS = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE)
_REMOTE_FLAGS = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)
# A link's flags (field 6), with their tag.
_LOCAL_LINK = b"\x35" + _pack_fixed32(_HAS_IS_REMOTE)
_REMOTE_LINK = b"\x35" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)


def _kvs(number: int, attributes: Mapping[str, Any] | None) -> bytes:
    """`attributes` as repeated KeyValue field `number`."""
    if not attributes:
        return b""
    cache = _attributes
    out = []
    for key, value in attributes.items():
        kind = value.__class__
        if kind not in _REMEMBERED:
            out.append(_field(number, _kv(key, value)))
            continue
        # The type in the key: 1, 1.0 and True are equal, but not encoded alike.
        cache_key = (number, key, kind, value)
        encoded = cache.get(cache_key)
        if encoded is None:
            encoded = _field(number, _kv(key, value))
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[cache_key] = encoded
        out.append(encoded)
    return b"".join(out)


# The value types whose encoded attributes are remembered: sequences may hold values that
# are equal but not encoded alike (True and 1), and are rare.
_REMEMBERED = frozenset({str, int, float, bool})


def _kv(key: str, value: Any) -> bytes:
    """A KeyValue's fields."""
    return _field(1, key.encode()) + _field(2, _any(value))


def _any(value: Any) -> bytes:
    """An AnyValue's fields."""
    scalar = _SCALARS.get(type(value)) or next(
        # A subclass (a StrEnum is a str, not a sequence of them).
        (encoder for kind, encoder in _SCALARS.items() if isinstance(value, kind)),
        None,
    )
    if scalar is not None:
        return bytes(scalar(value))
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, _kv(str(k), v)) for k, v in value.items()))
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any(v)) for v in value))
    raise TypeError(f"an attribute of type {type(value).__name__}")


_SCALARS: dict[type, Any] = {
    type(None): lambda _: b"",
    bool: lambda value: b"\x10" + _varint(int(value)),
    str: lambda value: _field(1, value.encode()),
    int: lambda value: b"\x18" + _varint(value),
    float: lambda value: b"\x21" + _pack_double(value),
    bytes: lambda value: _field(7, value),
}


def _field(number: int, payload: bytes | bytearray) -> bytes:
    """A length-delimited field."""
    size = len(payload)
    if number < 16 and size < 0x4000:  # a one-byte tag, a length of one or two bytes
        tag = number << 3 | 2
        prefix = bytes((tag, size)) if size < 0x80 else bytes((tag, size & 0x7F | 0x80, size >> 7))
        return prefix + payload
    return _varint(number << 3 | 2) + _varint(size) + payload


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64: two's complement, ten bytes
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
