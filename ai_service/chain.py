"""The models an analysis may be answered by, in order, and when to move on.

The first model is the primary. When a model fails transiently (overloaded, rate
limited, down, slow) and the call's deadline has not passed, the next model is asked;
after the last one, the offline fallback if one is configured. What the caller caused
(INVALID_ARGUMENT) or only the operator can fix (FAILED_PRECONDITION) ends the call at
once: no other model would do better, and a fallback would hide a broken configuration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from ai_service.backends.base import Backend, UpstreamTrace, is_transient
from ai_service.domain import AnalysisResult, PartialResult
from ai_service.metrics import Metrics
from ai_service.tracing import backend_span, record_usage
from servicekit.errors import ServiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answered:
    """A result, and the model of the chain that produced it (its result-cache name)."""

    result: AnalysisResult
    model: str


class ModelChain:
    def __init__(
        self, models: Sequence[Backend], *, fallback: Backend | None, metrics: Metrics
    ) -> None:
        if not models:
            raise ValueError("a model chain needs at least one model")
        self._links: tuple[Backend, ...] = (*models, *((fallback,) if fallback is not None else ()))
        self._fallback = fallback
        self._metrics = metrics

    @property
    def primary(self) -> str:
        return self._links[0].model

    @property
    def primary_backend(self) -> Backend:
        """The primary model's backend, for work that asks one model only."""
        return self._links[0]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(link.model for link in self._links)

    async def analyze(self, text: str, *, deadline: float, trace: UpstreamTrace) -> Answered:
        for position, link in enumerate(self._links):
            try:
                with backend_span(link.model, "analyze") as span:
                    result = await link.analyze(text, deadline=deadline, trace=trace)
                    record_usage(span, result)
            except ServiceError as error:
                self._next(position, error, deadline)
                continue
            return self._answered(position, result)
        raise AssertionError("the last link re-raises its error")

    async def stream(
        self, text: str, *, deadline: float, trace: UpstreamTrace
    ) -> AsyncIterator[PartialResult | Answered]:
        """Partial results, then exactly one Answered. A model that fails mid-stream
        hands over too: the final analysis, not the partials, is what is stored."""
        for position, link in enumerate(self._links):
            try:
                with backend_span(link.model, "stream") as span:
                    async for item in link.stream(text, deadline=deadline, trace=trace):
                        if isinstance(item, AnalysisResult):
                            record_usage(span, item)
                            yield self._answered(position, item)
                            return
                        yield item
            except ServiceError as error:
                self._next(position, error, deadline)
                continue
            raise AssertionError("a backend stream always ends with its result")

    def _next(self, position: int, error: ServiceError, deadline: float) -> None:
        """Move on from the link at `position` after `error`, or raise it."""
        failed = self._links[position]
        self._metrics.upstream_failed(failed.model, error)
        if position + 1 == len(self._links) or not is_transient(error):
            raise error
        successor = self._links[position + 1]
        # The offline fallback answers in milliseconds whatever the deadline; another
        # model needs time that a spent deadline no longer has.
        if successor is not self._fallback and asyncio.get_running_loop().time() >= deadline:
            raise error
        log.warning(
            "%s failed (%s: %s); asking %s instead",
            failed.model,
            error.code.name,
            error.message,
            successor.model,
        )
        self._metrics.fell_back(failed.model, successor.model)

    def _answered(self, position: int, result: AnalysisResult) -> Answered:
        link = self._links[position]
        if link is self._fallback:
            # Said in the answer, and filed under the analyzer that made it, so it never
            # answers a later request meant for the models.
            result = replace(result, model=f"{result.model} (fallback from {self.primary})")
        return Answered(result, link.model)
