"""An in-memory OpenTelemetry SDK for in-process tests of servicekit.telemetry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler

from servicekit import telemetry


class Spans:
    def __init__(self, exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
        self._exporter = exporter
        self.tracer = provider.get_tracer("tests")

    @property
    def finished(self) -> tuple[ReadableSpan, ...]:
        return self._exporter.get_finished_spans()

    def named(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.finished if s.name == name]
        return span


@contextmanager
def recorded_spans(root: Sampler = ALWAYS_ON, *, mirror: bool = True) -> Iterator[Spans]:
    """Tracing on (parent-based, `root` deciding new traces) into memory, for the block;
    `mirror`: as in a process whose code makes spans through OpenTelemetry's API itself
    (the ai service), or not (the gateway, the users service)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(root))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = Spans(exporter, provider)
    telemetry.use_tracer(spans.tracer, mirror=mirror)
    try:
        yield spans
    finally:
        telemetry.use_tracer(None)
        provider.shutdown()
