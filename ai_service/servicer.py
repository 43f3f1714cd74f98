"""gRPC adapter of the ai service: protobuf in, `Analyses` call, protobuf out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ai_service.analyses import Analyses
from ai_service.backends.base import UpstreamTrace
from ai_service.domain import Analysis, PartialResult, Sentiment
from servicekit.callers import CallerResolver
from servicekit.interceptor import add_trailing_metadata
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc

log = logging.getLogger(__name__)

UPSTREAM_REQUEST_ID_KEY = "anthropic-request-id"

SENTIMENT_TO_PROTO = {
    Sentiment.POSITIVE: analysis_pb2.SENTIMENT_POSITIVE,
    Sentiment.NEGATIVE: analysis_pb2.SENTIMENT_NEGATIVE,
    Sentiment.NEUTRAL: analysis_pb2.SENTIMENT_NEUTRAL,
    Sentiment.MIXED: analysis_pb2.SENTIMENT_MIXED,
}


# BatchAnalyzeTexts' handler (ai_service.operations_servicer): it answers an Operation.
BatchAnalyze = Callable[[analysis_pb2.BatchAnalyzeTextsRequest, Any], Awaitable[Any]]


class AnalysisServicer(analysis_pb2_grpc.AnalysisServiceServicer):
    def __init__(
        self,
        analyses: Analyses,
        callers: CallerResolver,
        *,
        default_deadline_seconds: float,
        batch_analyze: BatchAnalyze,
    ) -> None:
        self._analyses = analyses
        self._callers = callers
        self._default_deadline = default_deadline_seconds
        self._batch_analyze = batch_analyze

    async def AnalyzeText(  # noqa: N802
        self, request: analysis_pb2.AnalyzeTextRequest, context: Any
    ) -> analysis_pb2.Analysis:
        trace = UpstreamTrace()
        try:
            analysis = await self._analyses.analyze(
                request.text,
                request.user_id,
                await self._callers.caller(context),
                deadline=self._deadline(context),
                trace=trace,
                request_id=request.request_id,
            )
        finally:
            _report(trace, context)
        return to_proto(analysis)

    async def StreamAnalyzeText(  # noqa: N802
        self, request: analysis_pb2.AnalyzeTextRequest, context: Any
    ) -> AsyncIterator[analysis_pb2.AnalyzeTextResponseChunk]:
        trace = UpstreamTrace()
        caller = await self._callers.caller(context)
        try:
            async for item in self._analyses.stream(
                request.text,
                request.user_id,
                caller,
                deadline=self._deadline(context),
                trace=trace,
                request_id=request.request_id,
            ):
                if isinstance(item, PartialResult):
                    yield analysis_pb2.AnalyzeTextResponseChunk(partial=partial_to_proto(item))
                else:
                    yield analysis_pb2.AnalyzeTextResponseChunk(analysis=to_proto(item))
        finally:
            _report(trace, context)

    async def GetAnalysis(  # noqa: N802
        self, request: analysis_pb2.GetAnalysisRequest, context: Any
    ) -> analysis_pb2.Analysis:
        caller = await self._callers.caller(context)
        return to_proto(await self._analyses.get(request.id, caller))

    async def ListAnalyses(  # noqa: N802
        self, request: analysis_pb2.ListAnalysesRequest, context: Any
    ) -> analysis_pb2.ListAnalysesResponse:
        page = await self._analyses.list(
            request.user_id,
            await self._callers.caller(context),
            size=request.page_size,
            token=request.page_token,
        )
        return analysis_pb2.ListAnalysesResponse(
            analyses=[to_proto(a) for a in page.items], next_page_token=page.next_page_token
        )

    async def BatchAnalyzeTexts(  # noqa: N802
        self, request: analysis_pb2.BatchAnalyzeTextsRequest, context: Any
    ) -> Any:
        return await self._batch_analyze(request, context)

    def _deadline(self, context: Any) -> float:
        return call_deadline(context, self._default_deadline)


def call_deadline(context: Any, default_seconds: float) -> float:
    """The loop time by which the call must be answered (`default_seconds` from now for
    a call that came without a deadline)."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        remaining = default_seconds
    return asyncio.get_running_loop().time() + float(remaining)


def _report(trace: UpstreamTrace, context: Any) -> None:
    if trace.request_ids:
        log.info("anthropic request ids: %s", ", ".join(trace.request_ids))
        add_trailing_metadata(context, *((UPSTREAM_REQUEST_ID_KEY, r) for r in trace.request_ids))


def to_proto(analysis: Analysis) -> analysis_pb2.Analysis:
    result = analysis.result
    usage = result.usage
    message = analysis_pb2.Analysis(
        id=str(analysis.id),
        user_id=str(analysis.user_id),
        summary=result.summary,
        sentiment=SENTIMENT_TO_PROTO[result.sentiment],
        key_points=list(result.key_points),
        confidence=result.confidence,
        model=result.model,
        usage=analysis_pb2.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            service_tier=usage.service_tier,
        ),
        cached=analysis.cached,
    )
    message.create_time.FromDatetime(analysis.create_time)
    return message


def partial_to_proto(partial: PartialResult) -> analysis_pb2.PartialAnalysis:
    return analysis_pb2.PartialAnalysis(
        summary=partial.summary,
        sentiment=SENTIMENT_TO_PROTO[partial.sentiment]
        if partial.sentiment is not None
        else analysis_pb2.SENTIMENT_UNSPECIFIED,
        key_points=list(partial.key_points),
    )
