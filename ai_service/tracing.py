"""The span of one analysis asked of a backend: the model and the tokens it counted, as
OpenTelemetry's generative-AI conventions name them. Never the text, the prompt or the
answer. On the Claude path the SDK's own span of each Messages call (a repair makes a
second) is its child, with that call's model and tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.trace import Span

from ai_service.domain import AnalysisResult
from servicekit import telemetry


@contextmanager
def backend_span(model: str, operation: str) -> Iterator[Span | None]:
    """`operation`: "analyze" or "stream"."""
    attributes = {"gen_ai.operation.name": operation, "gen_ai.request.model": model}
    with telemetry.span(f"ai.{operation} {model}", attributes) as span:
        yield span


def record_usage(span: Span | None, result: AnalysisResult) -> None:
    if span is None or not span.is_recording():
        return
    usage = result.usage
    span.set_attributes(
        {
            "gen_ai.response.model": result.model,
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "gen_ai.usage.cache_read_input_tokens": usage.cache_read_input_tokens,
            "gen_ai.usage.cache_creation_input_tokens": usage.cache_creation_input_tokens,
        }
    )
