"""The offline analyzer: sentiment, summary and key phrases of a text, with no network."""

from __future__ import annotations

from ai_service.domain import AnalysisResult
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
        spans = sentences.split(text)
        reading = polarity.read(text, spans)
        return AnalysisResult(
            summary=summary.summarize(text, spans) or text.strip() or _NOTHING_TO_SUMMARIZE,
            sentiment=reading.sentiment,
            key_points=keyphrases.key_phrases(text, spans),
            confidence=reading.confidence,
            model=OFFLINE_MODEL,
        )

    def read(self, text: str) -> polarity.Reading:
        """The sentiment part of `analyze`, with the scores behind it (for the benchmark)."""
        return polarity.read(text, sentences.split(text))
