"""`confidence`: the calibrated probability that a sentiment label is right, for the text's kind.

Each genre has, per label, a table of (strength, probability) knots fitted on human-rated texts
of that genre (ai_service/offline/calibration.py, written by `make calibrate-offline`). A
text's confidence is the genres' table values mixed by how likely the text is of each genre
(ai_service/offline/genre.py). Every table rises with strength (NEUTRAL's is flat), so for a
given text a stronger reading never gets a lower confidence.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from ai_service.domain import Sentiment
from ai_service.offline.calibration import GENRES, TABLES

Knots = Sequence[tuple[float, float]]

_TABLES: dict[Sentiment, tuple[Knots, ...]] = {
    label: tuple(TABLES[genre][label.name] for genre in GENRES) for label in Sentiment
}


def confidence(sentiment: Sentiment, strength: float, genre_weights: Sequence[float]) -> float:
    """The genres' probabilities for `sentiment` at `strength`, weighted by `genre_weights`.

    `strength` is |compound| for a one-sided or neutral label and, for MIXED, the compound of
    the weaker side's strongest sentence; `genre_weights` sum to 1, in the order of `GENRES`.
    """
    return sum(
        weight * interpolate(knots, strength)
        for weight, knots in zip(genre_weights, _TABLES[sentiment], strict=True)
    )


def interpolate(knots: Knots, strength: float) -> float:
    """Linear between the knots, flat beyond them."""
    if strength <= knots[0][0]:
        return knots[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(knots):
        if strength <= x1:
            return y0 + (y1 - y0) * (strength - x0) / (x1 - x0) if x1 > x0 else y1
    return knots[-1][1]
