"""What every analysis backend offers the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from ai_service.domain import AnalysisResult, PartialResult
from servicekit.errors import DeadlineExceeded, ResourceExhausted, ServiceError, Unavailable


@dataclass
class UpstreamTrace:
    """What a call learned about its upstream requests, for logs and trailing metadata."""

    request_ids: list[str] = field(default_factory=list)


class Backend(Protocol):
    @property
    def model(self) -> str:
        """The model or analyzer that answers; part of the result-cache key."""
        ...

    async def analyze(self, text: str, *, deadline: float, trace: UpstreamTrace) -> AnalysisResult:
        """A validated analysis of `text`, before the loop time `deadline`."""
        ...

    def stream(
        self, text: str, *, deadline: float, trace: UpstreamTrace
    ) -> AsyncIterator[PartialResult | AnalysisResult]:
        """Partial results as they come, then exactly one validated AnalysisResult."""
        ...


def is_transient(error: ServiceError) -> bool:
    """Whether a later or different attempt might succeed (the fallback's trigger)."""
    return isinstance(error, Unavailable | ResourceExhausted | DeadlineExceeded)
