"""The offline analyzer: sentiment, summary and key phrases of a text, with no network."""

from __future__ import annotations

from collections.abc import Iterator

from ai_service.domain import AnalysisResult, PartialResult
from ai_service.offline import keyphrases, polarity, sentences, summary

# Names the analyzer and the version of its rules and calibration; bump it whenever either
# changes, since stored analyses carry it.
OFFLINE_MODEL = "offline-v2"
_NOTHING_TO_SUMMARIZE = "(empty text)"


class OfflineAnalyzer:
    """Deterministic text analysis: VADER-based sentiment, TextRank summary, RAKE key phrases.

    Holds no state, so one instance can serve any number of threads; the VADER lexicon is
    loaded once per process, on the first analysis.
    """

    __slots__ = ()

    def analyze(self, text: str) -> AnalysisResult:
        for step in self.steps(text):
            if isinstance(step, AnalysisResult):
                return step
        raise AssertionError("steps() ends with the result")

    def steps(self, text: str) -> Iterator[PartialResult | AnalysisResult]:
        """The analysis as it goes, as Claude's stream shows it: a partial per summary
        sentence, one with the sentiment, one per key point (each holding all found so
        far), then the whole result, which is what `analyze` answers."""
        spans = sentences.split(text)
        shown = ""
        for sentence in summary.choose(text, spans):
            shown = f"{shown} {sentence}" if shown else sentence
            yield PartialResult(summary=shown)
        shown = shown or text.strip() or _NOTHING_TO_SUMMARIZE
        reading = polarity.read(text, spans)
        yield PartialResult(summary=shown, sentiment=reading.sentiment)
        points = keyphrases.key_phrases(text, spans)
        for count in range(1, len(points) + 1):
            yield PartialResult(shown, reading.sentiment, points[:count])
        yield AnalysisResult(
            summary=shown,
            sentiment=reading.sentiment,
            key_points=points,
            confidence=reading.confidence,
            model=OFFLINE_MODEL,
        )

    def read(self, text: str) -> polarity.Reading:
        """The sentiment part of `analyze`, with the scores behind it (for the benchmark)."""
        return polarity.read(text, sentences.split(text))
