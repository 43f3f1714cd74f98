"""servicekit.telemetry: W3C context across the hops, unsampled traces cost no spans,
a batch's work links to the requests it serves, and tracing is off unless OTEL_* ask."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import StatusCode
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from servicekit import telemetry
from servicekit.batching import Batcher
from servicekit.observers import UpstreamObserver
from servicekit.span_records import SHAPE, span_context
from servicekit.telemetry import TRACE_ID_LIMIT
from tests.support.traces import recorded_spans

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
METHOD = "/users.v1.UsersService/GetUser"


@pytest.fixture(params=[False, True], ids=["built", "records"])
def records(request: pytest.FixtureRequest) -> bool:
    """Whether spans reach the processor as records (the services' exporter reads them)
    or built into the SDK's form as they end (any other processor)."""
    return bool(request.param)


def traceparent(metadata: list[tuple[str, str]]) -> str:
    (value,) = [v for k, v in metadata if k == "traceparent"]
    return value


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_traces_are_exported_only_when_the_otel_variables_say_where(
    environ: dict[str, str], wanted: bool
) -> None:
    assert telemetry.wanted(environ) is wanted


def test_off_nothing_is_made_and_nothing_is_sent() -> None:
    metadata = [("x-request-id", "r1")]
    assert telemetry.http_server_span("GET", b"00-x") is None
    assert telemetry.grpc_client_span(METHOD, "users:50051", metadata) is None
    assert telemetry.grpc_server_span(METHOD, ()) is None
    assert metadata == [("x-request-id", "r1")]
    assert telemetry.current_ids() is None


def test_a_clients_trace_goes_on_through_the_gateway_and_the_service(records: bool) -> None:
    with recorded_spans(records=records) as spans:
        http = telemetry.http_server_span("GET", f"00-{TRACE}-{PARENT}-01".encode())
        assert isinstance(http, telemetry.ActiveSpan) and http.span is not None
        assert telemetry.current_ids() == (TRACE, f"{span_context(http.span).span_id:016x}")
        metadata = [("x-request-id", "r1"), ("traceparent", "00-forged-by-the-caller")]
        client = telemetry.grpc_client_span(METHOD, "users:50051", metadata)
        assert client is not None
        server = telemetry.grpc_server_span(METHOD, tuple(metadata))
        assert server is not None
        telemetry.end_grpc_server_span(server, grpc.StatusCode.NOT_FOUND)
        telemetry.end_grpc_client_span(client, grpc.StatusCode.NOT_FOUND)
        telemetry.end_http_server_span(http, "/v1/users/{id}", 404)
        gateway = spans.named("GET /v1/users/{id}")
        client_span = next(s for s in spans.finished if s.kind == trace.SpanKind.CLIENT)
        server_span = next(
            s for s in spans.finished if s.kind == trace.SpanKind.SERVER and s.name != gateway.name
        )
    assert f"{gateway.context.trace_id:032x}" == TRACE
    assert gateway.parent is not None and f"{gateway.parent.span_id:016x}" == PARENT
    assert client_span.parent is not None and client_span.parent.span_id == gateway.context.span_id
    assert (
        server_span.parent is not None and server_span.parent.span_id == client_span.context.span_id
    )
    assert server_span.attributes is not None
    assert server_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # One traceparent only: the client span's replaced what the caller had put there.
    assert traceparent(metadata).split("-")[2] == f"{client_span.context.span_id:016x}"
    # NOT_FOUND is the caller's mistake: not an error of the server's span.
    assert server_span.status.status_code is StatusCode.UNSET
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_an_unsampled_trace_makes_no_span_but_goes_on_with_its_ids(records: bool) -> None:
    with recorded_spans(records=records) as spans:
        http = telemetry.http_server_span("GET", f"00-{TRACE}-{PARENT}-00".encode())
        assert http is not None
        assert telemetry.current_ids() == (TRACE, PARENT)
        metadata: list[tuple[str, str]] = []
        assert telemetry.grpc_client_span(METHOD, "users:50051", metadata) is None
        assert traceparent(metadata) == f"00-{TRACE}-{PARENT}-00"
        with telemetry.span("internal") as internal:
            assert internal is None
        telemetry.end_http_server_span(http, "/v1/users/{id}", 200)
        assert spans.finished == ()


async def test_a_batchs_call_links_to_every_request_it_serves_under_the_first(
    records: bool,
) -> None:
    async def run(items: list[int]) -> list[int]:
        # The batch's shared work: a call, and a step with a step of its own inside.
        metadata: list[tuple[str, str]] = []
        client = telemetry.grpc_client_span(METHOD, "users:50051", metadata)
        assert client is not None
        telemetry.end_grpc_client_span(client, grpc.StatusCode.OK)
        with telemetry.span("tests.step"), telemetry.span("tests.inner"):
            pass
        return [item * 2 for item in items]

    batcher: Batcher[int, int] = Batcher(run, name="tests.batch")
    with recorded_spans(records=records) as spans:

        async def request(n: int) -> int:
            with spans.tracer.start_as_current_span(f"request {n}"):
                return await batcher.submit(n)

        assert await asyncio.gather(*(request(n) for n in range(3))) == [0, 2, 4]
        requests = [spans.named(f"request {n}") for n in range(3)]
        call = spans.named(METHOD.lstrip("/"))
        step, inner = spans.named("tests.step"), spans.named("tests.inner")
        names = [span.name for span in spans.finished]
    # No span of the batch's own: the call is its work, linked to every request.
    assert "tests.batch" not in names
    assert {link.context.span_id for link in call.links} == {r.context.span_id for r in requests}
    assert call.parent is not None and call.parent.span_id == requests[0].context.span_id
    assert call.attributes is not None
    assert call.attributes["tandem.batch"] == "tests.batch"
    assert call.attributes["tandem.batch.size"] == 3
    assert call.attributes["rpc.method"] == "GetUser"
    # Each span of the batch's work links so; what is below them is their child as ever.
    assert [link.context for link in step.links] == [link.context for link in call.links]
    assert step.parent == call.parent
    assert inner.parent is not None and inner.parent.span_id == step.context.span_id
    assert not inner.links


async def test_each_statement_of_a_batch_links_to_the_requests_it_serves(records: bool) -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    with recorded_spans(records=records) as spans:
        telemetry.instrument_engine(engine)

        async def run(items: list[int]) -> list[int]:
            async with engine.begin() as connection:
                await connection.execute(text("SELECT 1"))
                await connection.execute(text("SELECT 2"))
            return items

        batcher: Batcher[int, int] = Batcher(run, name="tests.inserts")

        async def request(n: int) -> int:
            with spans.tracer.start_as_current_span(f"request {n}"):
                return await batcher.submit(n)

        try:
            await asyncio.gather(*(request(n) for n in range(2)))
        finally:
            await engine.dispose()
        requests = {spans.named(f"request {n}").context.span_id for n in range(2)}
        statements = [span for span in spans.finished if span.name.startswith("SELECT")]
    assert len(statements) == 2
    for statement in statements:
        assert {link.context.span_id for link in statement.links} == requests
        assert statement.attributes is not None
        assert statement.attributes["tandem.batch"] == "tests.inserts"
        assert statement.attributes["db.system"] == "sqlite"


def test_an_upstream_outage_is_one_warning_when_it_begins_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = UpstreamObserver("users", "users:50051")
    with caplog.at_level(logging.WARNING, logger="servicekit.upstreams"):
        for code in (
            grpc.StatusCode.OK,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.OK,
            grpc.StatusCode.OK,
        ):
            observer.begin(METHOD, [], stream=False)(code)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0] == (
        "the users service at users:50051 is unavailable: GetUser answered UNAVAILABLE"
    )
    assert messages[1].startswith("the users service at users:50051 is back after ")
    assert messages[1].endswith("(3 calls failed meanwhile)")


def kept(started: telemetry.Started | None) -> bool:
    """Whether a request's start made it a span (its trace is sampled): its record, or
    where the context is mirrored, an `ActiveSpan` holding one."""
    if isinstance(started, telemetry.ActiveSpan):
        return started.span is not None
    return isinstance(started, list)


@pytest.mark.parametrize("mirror", [True, False])
def test_an_unsampled_root_goes_on_to_the_service_with_its_trace_id_and_flags(
    mirror: bool, records: bool
) -> None:
    with recorded_spans(ALWAYS_OFF, mirror=mirror, records=records) as spans:
        http = telemetry.http_server_span("GET")
        assert http is not None and not kept(http)
        ids = telemetry.current_ids()
        assert ids is not None
        trace_id, span_id = ids
        metadata = [("x-request-id", "r1"), ("traceparent", "00-forged-by-the-caller")]
        assert telemetry.grpc_client_span(METHOD, "users:50051", metadata) is None
        # Flags: not sampled, and a random trace id (W3C's flag 02, as the SDK sets it).
        assert traceparent(metadata) == f"00-{trace_id}-{span_id}-02"
        server = telemetry.grpc_server_span(METHOD, tuple(metadata))
        assert server is not None
        assert telemetry.current_ids() == (trace_id, span_id)
        # What makes spans through OpenTelemetry's API itself (the anthropic SDK) makes
        # none in an unsampled trace either.
        with spans.tracer.start_as_current_span("the sdk's") as made:
            assert not made.is_recording() or not mirror
        with telemetry.span("internal") as internal:
            assert internal is None
        telemetry.end_grpc_server_span(server, grpc.StatusCode.OK)
        assert telemetry.current_ids() == (trace_id, span_id)
        telemetry.end_http_server_span(http, "/v1/users/{id}", 200)
        assert telemetry.current_ids() is None
        assert spans.finished == ()
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.parametrize("mirror", [True, False])
def test_a_clients_unsampled_traceparent_goes_on_exactly_as_it_came(
    mirror: bool, records: bool
) -> None:
    given = f"00-{TRACE}-{PARENT}-02"  # a flag other than sampled, kept
    with recorded_spans(mirror=mirror, records=records) as spans:
        http = telemetry.http_server_span("GET", given.encode())
        assert http is not None
        assert telemetry.current_ids() == (TRACE, PARENT)
        metadata: list[tuple[str, str]] = []
        telemetry.grpc_client_span(METHOD, "users:50051", metadata)
        assert metadata == [("traceparent", given)]
        server = telemetry.grpc_server_span(METHOD, tuple(metadata))
        assert server is not None and not kept(server)
        onward: list[tuple[str, str]] = []
        telemetry.grpc_client_span(METHOD, "ai:50052", onward)
        assert onward == [("traceparent", given)]
        telemetry.end_grpc_server_span(server, grpc.StatusCode.OK)
        assert telemetry.current_ids() == (TRACE, PARENT)
        telemetry.end_http_server_span(http, None, 200)
        assert telemetry.current_ids() is None
        assert spans.finished == ()


def new_traces(count: int) -> list[tuple[int, bool]]:
    """`count` requests that begin a trace each: its trace id, and whether it was kept."""
    made = []
    for _ in range(count):
        http = telemetry.http_server_span("GET")
        assert http is not None
        ids = telemetry.current_ids()
        assert ids is not None
        made.append((int(ids[0], 16), kept(http)))
        telemetry.end_http_server_span(http, None, 200)
    return made


@pytest.mark.parametrize("mirror", [True, False])
def test_a_ratio_sampler_decides_each_new_trace_once_by_its_id(mirror: bool, records: bool) -> None:
    ratio = TraceIdRatioBased(0.5)
    with recorded_spans(ratio, mirror=mirror, records=records) as spans:
        traces = new_traces(200)
        sampled = sum(kept for _, kept in traces)
        assert len(spans.finished) == sampled
    # The trace id the sampler was asked about is the trace's: sampled exactly when the
    # ratio's rule says so.
    for trace_id, kept in traces:
        assert kept is (trace_id & TRACE_ID_LIMIT < ratio.bound)
    assert sampled and len(traces) - sampled


def test_a_root_sampler_of_another_rule_decides_each_new_trace_by_its_id(records: bool) -> None:
    class EvenIds(Sampler):
        """Keeps the new traces of an even trace id."""

        def should_sample(
            self, parent_context: Any, trace_id: int, *_: Any, **__: Any
        ) -> SamplingResult:
            keep = trace_id % 2 == 0
            return SamplingResult(Decision.RECORD_AND_SAMPLE if keep else Decision.DROP)

        def get_description(self) -> str:
            return "EvenIds"

    with recorded_spans(EvenIds(), records=records) as spans:
        traces = new_traces(64)
        kept = [trace_id for trace_id, was_kept in traces if was_kept]
        assert [s.context.trace_id for s in spans.finished] == kept
    for trace_id, was_kept in traces:
        assert was_kept is (trace_id % 2 == 0)
    assert 0 < len(kept) < 64


def test_a_sampler_that_is_not_parent_based_is_asked_for_each_span() -> None:
    """As the SDK's tracer would ask it: here one that samples every span, so a caller's
    unsampled trace is recorded from this process on, with the caller's trace id, and
    one that drops the spans of one name drops just those (their context goes on)."""

    class AllBut(Sampler):
        def should_sample(
            self, parent_context: Any, trace_id: int, name: str, *_: Any, **__: Any
        ) -> SamplingResult:
            keep = name != "tests.dropped"
            return SamplingResult(
                Decision.RECORD_AND_SAMPLE if keep else Decision.DROP, {"tests.asked": True}
            )

        def get_description(self) -> str:
            return "AllBut"

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=AllBut())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry._install(provider.get_tracer("tests"), parent_based=False, mirror=False)
    try:
        http = telemetry.http_server_span("GET", f"00-{TRACE}-{PARENT}-00".encode())
        assert http is not None
        with telemetry.span("tests.dropped") as dropped:
            assert dropped is not None and not dropped.is_recording()
            sent: list[tuple[str, str]] = []
            client = telemetry.grpc_client_span(METHOD, "users:50051", sent)
            assert client is not None
            telemetry.end_grpc_client_span(client, grpc.StatusCode.OK)
        telemetry.end_http_server_span(http, "/v1/users/{id}", 200)
    finally:
        telemetry.use_tracer(None)
        provider.shutdown()
    request, call = exporter.get_finished_spans()[::-1]
    assert request.name == "GET /v1/users/{id}" and call.name == METHOD.lstrip("/")
    assert f"{request.context.trace_id:032x}" == TRACE
    assert request.parent is not None and f"{request.parent.span_id:016x}" == PARENT
    assert request.context.trace_flags.sampled
    # The call's parent is the dropped span: never recorded, but its ids went on.
    assert call.parent is not None
    assert call.parent.span_id == dropped.get_span_context().span_id
    assert traceparent(sent).split("-")[3] == "01"
    assert call.attributes is not None and call.attributes["tests.asked"] is True


async def test_a_batch_of_a_sampled_request_behind_an_unsampled_one_is_in_its_trace(
    records: bool,
) -> None:
    sent: list[list[tuple[str, str]]] = []

    async def run(items: list[int]) -> list[int]:
        metadata: list[tuple[str, str]] = []
        client = telemetry.grpc_client_span(METHOD, "users:50051", metadata)
        assert client is not None
        telemetry.end_grpc_client_span(client, grpc.StatusCode.OK)
        sent.append(metadata)
        # Code that makes spans through OpenTelemetry's API (the ai service's SDK) is in
        # the sampled request's trace too: OpenTelemetry's context is mirrored.
        with spans.tracer.start_as_current_span("tests.through the api"):
            pass
        return items

    batcher: Batcher[int, int] = Batcher(run, name="tests.batch")
    with recorded_spans(records=records) as spans:

        async def request(flags: str) -> int:
            given = f"00-{TRACE if flags == '00' else 'f' * 32}-{PARENT}-{flags}"
            http = telemetry.http_server_span("GET", given.encode())
            assert http is not None
            try:
                return await batcher.submit(1)
            finally:
                telemetry.end_http_server_span(http, None, 200)

        await asyncio.gather(request("00"), request("01"))
        sampled = spans.named("GET")
        call = spans.named(METHOD.lstrip("/"))
        through_the_api = spans.named("tests.through the api")
        assert trace.get_current_span() is trace.INVALID_SPAN
    assert through_the_api.parent is not None
    assert through_the_api.parent.span_id == sampled.context.span_id
    # Linked to the sampled request only, and its child: not dropped with the first.
    assert [link.context.span_id for link in call.links] == [sampled.context.span_id]
    assert call.parent is not None and call.parent.span_id == sampled.context.span_id
    assert call.attributes is not None and call.attributes["tandem.batch.size"] == 2
    (metadata,) = sent
    assert traceparent(metadata).startswith(f"00-{'f' * 32}-")
    assert traceparent(metadata).endswith("-01")


def test_a_span_that_an_exception_ends_says_its_type_not_its_message(records: bool) -> None:
    with recorded_spans(records=records) as spans:
        http = telemetry.http_server_span("GET")
        assert http is not None
        with pytest.raises(ValueError, match="a client's secret"), telemetry.span("internal"):
            raise ValueError("a client's secret")
        telemetry.end_http_server_span(http, None, 500)
        internal = spans.named("internal")
        request = spans.named("GET")
    assert internal.status.status_code is StatusCode.ERROR
    assert internal.status.description == "ValueError"
    assert not internal.events
    assert internal.parent is not None and internal.parent.span_id == request.context.span_id
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes == {"http.request.method": "GET", "http.response.status_code": 500}


def test_a_processor_added_later_sees_the_spans_made_after_and_their_start() -> None:
    """Records go to the provider's processors directly: the list is read again
    when the provider's changes."""
    started: list[str] = []

    class Watching(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            started.append(span.name)

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_tracer(provider.get_tracer("tests"))
    try:
        first = telemetry.http_server_span("GET")
        assert first is not None
        telemetry.end_http_server_span(first, None, 200)
        later = InMemorySpanExporter()
        provider.add_span_processor(Watching())
        provider.add_span_processor(SimpleSpanProcessor(later))
        second = telemetry.http_server_span("POST")
        assert second is not None
        telemetry.end_http_server_span(second, None, 201)
    finally:
        telemetry.use_tracer(None)
        provider.shutdown()
    assert [span.name for span in exporter.get_finished_spans()] == ["GET", "POST"]
    assert [span.name for span in later.get_finished_spans()] == ["POST"]
    assert started == ["POST"]


def test_a_full_batching_queue_drops_its_oldest_span_as_the_processor_would(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records skip the processor's `emit` and go to its queue directly: a batch ready
    wakes its thread, and a full queue drops its oldest span, with the processor's
    warning and drop count."""
    exporting, release = threading.Event(), threading.Event()

    class Held(SpanExporter):
        """Reads records, as the OTLP one; holds its first export until released."""

        reads_records = True

        def __init__(self) -> None:
            self.names: list[str] = []

        def export(self, spans: Any) -> SpanExportResult:
            exporting.set()
            release.wait(10)
            self.names += [record[SHAPE].name for record in spans]
            return SpanExportResult.SUCCESS

    exporter = Held()
    processor = BatchSpanProcessor(
        exporter, max_queue_size=4, max_export_batch_size=2, schedule_delay_millis=60_000
    )
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(processor)
    telemetry.use_tracer(provider.get_tracer("tests"))
    dropped: list[int] = []
    # The processor's count of dropped spans (its own metrics).
    monkeypatch.setattr(
        processor._batch_processor._metrics, "drop_items", lambda n, *_: dropped.append(n)
    )

    def span(name: str) -> None:
        with telemetry.span(name):
            pass

    try:
        for n in range(2):  # the second makes a batch and wakes the thread, as emit does
            span(f"s{n}")
        assert exporting.wait(10)  # it took s0 and s1, and holds them
        span("s2")
        with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk._shared_internal"):
            for n in range(3, 7):  # s2..s5 fill the queue; s6 drops s2
                span(f"s{n}")
        release.set()
        assert provider.force_flush()
    finally:
        release.set()
        telemetry.use_tracer(None)
        provider.shutdown()
    assert exporter.names == ["s0", "s1", "s3", "s4", "s5", "s6"]
    assert dropped == [1]
    assert [r.getMessage() for r in caplog.records] == ["Queue full, dropping Span."]


def test_a_span_that_ends_after_its_provider_shut_down_is_dropped_as_the_processor_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request still running when tracing stops (the services' shutdown: the tracer
    uninstalled, then its provider shut down) ends its span through the processor, which
    drops it with its count, rather than into the queue of a thread that has stopped."""
    kept: list[object] = []

    class Kept(SpanExporter):
        reads_records = True

        def export(self, spans: Any) -> SpanExportResult:
            kept.extend(spans)
            return SpanExportResult.SUCCESS

    processor = BatchSpanProcessor(Kept())
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(processor)
    telemetry.use_tracer(provider.get_tracer("tests"))
    dropped: list[tuple[object, ...]] = []
    monkeypatch.setattr(
        processor._batch_processor._metrics, "drop_items", lambda *why: dropped.append(why)
    )
    with telemetry.span("before the shutdown"):
        pass
    with telemetry.span("running at the shutdown"):
        telemetry.use_tracer(None)
        provider.shutdown()
    assert [span[SHAPE].name for span in kept] == ["before the shutdown"]  # type: ignore[index]
    assert dropped == [(1, "already_shutdown")]
    assert not processor._batch_processor._queue


def test_spans_reach_the_batching_processors_exporter_as_the_services_configure_it() -> None:
    """The services' one processor is the SDK's batching one: ours go to its queue
    directly, and are exported in batches, by its thread, when it is flushed or stopped."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=4))
    telemetry.use_tracer(provider.get_tracer("tests"))
    try:
        sent: list[tuple[str, str]] = []
        for _ in range(40):
            request = telemetry.http_server_span("GET")
            assert request is not None
            sent.clear()
            client = telemetry.grpc_client_span(METHOD, "users:50051", sent)
            if client is not None:
                telemetry.end_grpc_client_span(client, grpc.StatusCode.INTERNAL)
            telemetry.end_http_server_span(request, "/v1/users/{id}", 200)
        assert provider.force_flush()
    finally:
        telemetry.use_tracer(None)
        provider.shutdown()
    spans = exporter.get_finished_spans()
    requests = [span for span in spans if span.kind is trace.SpanKind.SERVER]
    calls = [span for span in spans if span.kind is trace.SpanKind.CLIENT]
    assert 0 < len(requests) < 40  # half sampled, about
    assert len(calls) == len(requests)
    assert {span.parent.span_id for span in calls} == {  # type: ignore[union-attr]
        span.context.span_id for span in requests
    }
    assert {span.attributes["rpc.grpc.status_code"] for span in calls} == {13}  # type: ignore[index]
    assert {span.status.status_code for span in calls} == {StatusCode.ERROR}
