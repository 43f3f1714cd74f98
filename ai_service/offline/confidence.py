"""`confidence`: the calibrated probability that a sentiment label is right, from a table."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from ai_service.domain import Sentiment
from ai_service.offline import calibration

_KNOTS: dict[Sentiment, Sequence[tuple[float, float]]] = {
    Sentiment.POSITIVE: calibration.POSITIVE,
    Sentiment.NEGATIVE: calibration.NEGATIVE,
    Sentiment.NEUTRAL: calibration.NEUTRAL,
    Sentiment.MIXED: calibration.MIXED,
}


def confidence(sentiment: Sentiment, strength: float) -> float:
    """Interpolated between the table's (strength, probability) knots, flat beyond them.

    `strength` is |compound| for a one-sided or neutral label and, for MIXED, the compound of
    the weaker side's strongest sentence.
    """
    knots = _KNOTS[sentiment]
    if strength <= knots[0][0]:
        return knots[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(knots):
        if strength <= x1:
            return y0 + (y1 - y0) * (strength - x0) / (x1 - x0) if x1 > x0 else y1
    return knots[-1][1]
