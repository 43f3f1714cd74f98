"""The offline backend: the deterministic local analyzer, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ai_service.backends.base import UpstreamTrace
from ai_service.domain import AnalysisResult, PartialResult

if TYPE_CHECKING:
    from ai_service.offline import OfflineAnalyzer


class OfflineBackend:
    def __init__(self, analyzer: OfflineAnalyzer | None = None) -> None:
        # Imported here: a service that never falls back need not load the lexicons.
        from ai_service.offline import OFFLINE_MODEL, OfflineAnalyzer  # noqa: PLC0415

        self._analyzer = analyzer or OfflineAnalyzer()
        self._model: str = OFFLINE_MODEL

    @property
    def model(self) -> str:
        return self._model

    async def analyze(self, text: str, *, deadline: float, trace: UpstreamTrace) -> AnalysisResult:
        # Pure-Python work of a few milliseconds per KB: a thread keeps the loop
        # answering other calls while a 50,000-character text is analysed.
        return await asyncio.to_thread(self._analyzer.analyze, text)

    async def stream(
        self, text: str, *, deadline: float, trace: UpstreamTrace
    ) -> AsyncIterator[PartialResult | AnalysisResult]:
        # Each step in the thread as it comes, so partials go out as the analysis goes,
        # in the shape Claude's stream has (OfflineAnalyzer.steps).
        steps = self._analyzer.steps(text)
        while (step := await asyncio.to_thread(next, steps, None)) is not None:
            yield step
