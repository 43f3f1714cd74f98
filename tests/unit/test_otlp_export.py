"""servicekit.otlp_export writes what the OTLP exporter's own encoder makes."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.util.types import AttributeValue

from servicekit import otlp_export, telemetry
from servicekit.batching import Batcher
from servicekit.span_records import built
from tests.support.otlp import otlp_receiver
from tests.support.traces import recorded_spans

METHOD = "/users.v1.UsersService/GetUser"

REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "x1"), ("other", "y")]),
)


def finished_spans() -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "tandem-test", "replica": 3}),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tandem")
    other = provider.get_tracer("anthropic", "1.2.3", schema_url="https://example.test/s")
    remote_parent = set_span_in_context(NonRecordingSpan(REMOTE))
    values: dict[str, AttributeValue] = {
        "text": "SELECT 1",
        "empty": "",
        "unicode": "café ✓",
        "yes": True,
        "no": False,
        "zero": 0,
        "big": 2**62,
        "negative": -5,
        "ratio": 0.25,
        "strings": ("a", "b"),
        "ints": [1, -2, 300],
        "floats": [1.5],
        "bools": [True, False],
    }
    for round_ in range(2):  # twice: the second from the remembered attributes
        server = tracer.start_span("GET /v1/users/{id}", remote_parent, SpanKind.SERVER, values)
        child = tracer.start_span(
            "users.v1.UsersService/GetUser",
            set_span_in_context(server),
            SpanKind.CLIENT,
            {"rpc.system": "grpc", "rpc.grpc.status_code": 5},
        )
        child.set_status(Status(StatusCode.ERROR, "NOT_FOUND"))
        child.add_event("retry", {"attempt": round_})
        child.end()
        batch = tracer.start_span(
            "gateway.coalesced_reads",
            set_span_in_context(server),
            links=[
                Link(server.get_span_context()),
                Link(REMOTE, {"why": "fan-in"}),
            ],
            attributes={"tandem.batch.size": 2},
        )
        batch.set_status(Status(StatusCode.OK))
        batch.end()
        server.end()
        with other.start_as_current_span("chat", kind=SpanKind.PRODUCER):
            pass
    root = tracer.start_span("root", kind=SpanKind.CONSUMER)
    root.end()
    provider.shutdown()
    return exporter.get_finished_spans()


def test_the_bytes_decode_to_what_the_exporters_encoder_makes() -> None:
    spans = finished_spans()
    ours = ExportTraceServiceRequest.FromString(otlp_export.encode(spans))
    assert ours == encode_spans(spans)
    assert len(ours.resource_spans[0].scope_spans) == 2
    assert sum(len(s.spans) for s in ours.resource_spans[0].scope_spans) == len(spans)


async def test_tandems_own_spans_encode_as_the_exporters_encoder_has_them() -> None:
    """The spans servicekit.telemetry makes reach the exporter as records (span_records),
    encoded from their fields, in one request with the SDK's spans of other code."""

    async def call(items: list[int]) -> list[int]:
        client = telemetry.grpc_client_span(METHOD, "users:50051", [])
        assert client is not None
        telemetry.end_grpc_client_span(client, grpc.StatusCode.UNAVAILABLE)
        return items

    batcher: Batcher[int, int] = Batcher(call, name="gateway.user_reads")
    given_parents = (None, b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    # Ended with and without a status (records without one are packed otherwise); a
    # statement whose span is under 128 bytes, and one over 16 KiB.
    endings = ((grpc.StatusCode.INTERNAL, 503), (grpc.StatusCode.OK, 200))
    statements = ("SELECT 1", "", "SELECT " + "x, " * 6000 + "1")
    with recorded_spans(records=True) as recorded:
        for given, (code, status), statement in itertools.product(
            given_parents, endings, statements
        ):
            state = b"vendor=x1" if given and code is not grpc.StatusCode.OK else None
            http = telemetry.http_server_span("GET", given, state)
            assert http is not None
            await asyncio.gather(batcher.submit(1), batcher.submit(2))
            server = telemetry.grpc_server_span(
                METHOD, [("traceparent", given.decode())] if given else ()
            )
            assert server is not None
            attributes = {"db.query.text": statement, "n": 2**40} if statement else {}
            with telemetry.span("S" if not statement else "SELECT tandem", attributes):
                pass
            telemetry.end_grpc_server_span(server, code)
            telemetry.end_http_server_span(http, "/v1/users/{id}", status)
        # What other code may set on a current span of ours: values equal to others but
        # not encoded alike (True, 1 and 1.0), one that cannot be remembered (a list), a
        # link with attributes.
        for values in ({"flag": True, "n": 1}, {"flag": 1, "n": 1.0}, {"ids": [1, 2]}):
            with telemetry.span("odd", {"n": 0, "fixed": "yes"}) as odd:
                assert odd is not None
                odd.set_attributes(values)
                odd.add_link(REMOTE, {"why": "fan-in"})
        with recorded.tracer.start_as_current_span("the sdk's", kind=SpanKind.PRODUCER):
            pass
        sent = recorded.records
    assert {type(span) for span in sent} == {list, ReadableSpan}
    spans = [built(span) if isinstance(span, list) else span for span in sent]
    assert any(span.links for span in spans)
    for _ in range(2):  # the second from the shapes' encodings, and remembered attributes
        ours = ExportTraceServiceRequest.FromString(otlp_export.encode(sent))
        assert ours == encode_spans(spans)


def test_no_spans_is_an_empty_request() -> None:
    assert otlp_export.encode(()) == b""
    assert ExportTraceServiceRequest.FromString(b"") == encode_spans(())


async def test_the_exporter_sends_them_to_the_otel_variables_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spans = finished_spans()
    async with otlp_receiver() as (receiver, endpoint):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        exporter = otlp_export.SpanExporter()
        try:
            result = await asyncio.to_thread(exporter.export, spans)
        finally:
            exporter.shutdown()
        assert result is SpanExportResult.SUCCESS
        await receiver.wait_until(lambda received: len(received) == len(spans))
    by_name = {span.name: span for span in receiver.spans}
    remote = (f"{REMOTE.trace_id:032x}", f"{REMOTE.span_id:016x}")
    assert by_name["gateway.coalesced_reads"].links[1] == remote
    assert {span.service for span in receiver.spans} == {"tandem-test"}
