"""The sentiment label of a text from its sentence and document valences, with confidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ai_service.domain import Sentiment
from ai_service.offline import genre, valence
from ai_service.offline.confidence import confidence

# VADER's own band: measured on the corpora, the sign of |compound| < 0.05 agrees with the
# raters no better than chance (48%), so such texts are called neutral.
NEUTRAL_BAND = 0.05
# A sentence counts as clearly positive or negative beyond the same band: on synthetic
# two- and three-snippet documents of the fitting half, stricter thresholds (0.1 to 0.6)
# raised MIXED's precision by at most 0.13 but cost more in recall and accuracy.
CLEAR_SENTENCE = NEUTRAL_BAND
# The weaker side needs at least half as many clear sentences as the stronger side, so one
# grumble in a long rave does not make the text mixed (it costs one point of accuracy on the
# synthetic documents, which are too short to show what it buys on long texts).
MIXED_BALANCE = 0.5


@dataclass(frozen=True, slots=True)
class Reading:
    """What the offline analyzer makes of a text's sentiment."""

    sentiment: Sentiment
    confidence: float
    # What `confidence` was looked up with: |score|, or for MIXED the weaker side's strength.
    strength: float
    # Document compound in [-1, 1]: the continuous score.
    score: float
    # The one-sided label the score alone gives; what a MIXED text leans to.
    lean: Sentiment
    sentence_scores: tuple[float, ...]


def read(text: str, sentence_spans: Sequence[tuple[int, int]]) -> Reading:
    scored = valence.score(text, sentence_spans)
    genre_weights = genre.weights(text)
    lean = _lean(scored.compound)
    positives = [s for s in scored.sentence_compounds if s > CLEAR_SENTENCE]
    negatives = [-s for s in scored.sentence_compounds if s < -CLEAR_SENTENCE]
    if positives and negatives:
        fewer, more = sorted((len(positives), len(negatives)))
        if fewer / more >= MIXED_BALANCE:
            weaker_side = min(max(positives), max(negatives))
            return Reading(
                Sentiment.MIXED,
                confidence(Sentiment.MIXED, weaker_side, genre_weights),
                weaker_side,
                scored.compound,
                lean,
                scored.sentence_compounds,
            )
    return Reading(
        lean,
        confidence(lean, abs(scored.compound), genre_weights),
        abs(scored.compound),
        scored.compound,
        lean,
        scored.sentence_compounds,
    )


def _lean(compound: float) -> Sentiment:
    if compound > NEUTRAL_BAND:
        return Sentiment.POSITIVE
    if compound < -NEUTRAL_BAND:
        return Sentiment.NEGATIVE
    return Sentiment.NEUTRAL
