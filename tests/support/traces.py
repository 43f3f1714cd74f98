"""An in-memory OpenTelemetry SDK for in-process tests of servicekit.telemetry."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler

from servicekit import telemetry
from servicekit.span_records import Record, built


class RecordsKept(SpanExporter):
    """Keeps what it is sent as it came: records of Tandem's spans (it reads them, as
    servicekit.otlp_export's exporter does), and the SDK's spans of other code."""

    reads_records = True

    def __init__(self) -> None:
        self.sent: list[Record | ReadableSpan] = []

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.sent.extend(spans)
        return SpanExportResult.SUCCESS


class Spans:
    def __init__(
        self,
        provider: TracerProvider,
        exporter: InMemorySpanExporter | None,
        kept: RecordsKept | None,
    ) -> None:
        self._provider = provider
        self._exporter = exporter
        self._kept = kept
        self.tracer = provider.get_tracer("tests")

    @property
    def records(self) -> list[Record | ReadableSpan]:
        """What the exporter was sent, as it came (with `records=True`)."""
        assert self._kept is not None
        self._provider.force_flush()
        return self._kept.sent

    @property
    def finished(self) -> tuple[ReadableSpan, ...]:
        if self._exporter is not None:
            return self._exporter.get_finished_spans()
        return tuple(built(s) if isinstance(s, list) else s for s in self.records)

    def named(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.finished if s.name == name]
        return span


@contextmanager
def recorded_spans(
    root: Sampler = ALWAYS_ON, *, mirror: bool = True, records: bool = False
) -> Iterator[Spans]:
    """Tracing on (parent-based, `root` deciding new traces) into memory, for the block;
    `mirror`: as in a process whose code makes spans through OpenTelemetry's API itself
    (the ai service), or not (the gateway, the users service). `records`: through the
    SDK's batching processor with an exporter that reads records, as the services
    export (else each span is built for the SDK's in-memory exporter as it ends)."""
    provider = TracerProvider(sampler=ParentBased(root))
    exporter = kept = None
    if records:
        kept = RecordsKept()
        provider.add_span_processor(BatchSpanProcessor(kept))
    else:
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = Spans(provider, exporter, kept)
    telemetry.use_tracer(spans.tracer, mirror=mirror)
    try:
        yield spans
    finally:
        telemetry.use_tracer(None)
        provider.shutdown()
