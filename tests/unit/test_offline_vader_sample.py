"""The offline analyzer on the committed sample of the VADER corpora (tests/data/vader).

500 held-out items per domain (bench/_vader_corpora.py: the half the calibration never saw),
with their raters' ratings. The full figures are `make bench-offline`'s.
"""

from __future__ import annotations

import ast
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # type: ignore[import-untyped]

from ai_service.domain import Sentiment
from ai_service.offline import OfflineAnalyzer
from ai_service.offline.polarity import NEUTRAL_BAND, Reading
from tests.support.sentiment_scoring import (
    ECE_TARGET,
    expected_calibration_error,
    gold_label,
    is_right,
    macro_f1,
    sign,
    weighted_f1,
)

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "vader"
SAMPLE_SIZE = 500
STEMS = {
    "tweets": "tweets",
    "movie": "movieReviewSnippets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
Measure = Callable[[Sequence[int], Sequence[int]], float]
SIGNS = {Sentiment.POSITIVE: 1, Sentiment.NEGATIVE: -1, Sentiment.NEUTRAL: 0}


@dataclass(frozen=True)
class Rated:
    mean_rating: float
    ratings: tuple[int, ...]
    reading: Reading
    vader_compound: float

    @property
    def sign_read(self) -> int:
        # A MIXED reading counts as the side it leans to, as in bench/offline_quality.py.
        reading = self.reading
        return SIGNS[reading.lean if reading.sentiment is Sentiment.MIXED else reading.sentiment]

    @property
    def vader_sign(self) -> int:
        return sign(self.vader_compound) if abs(self.vader_compound) > NEUTRAL_BAND else 0


@cache
def sample(domain: str) -> tuple[Rated, ...]:
    analyzer, vader = OfflineAnalyzer(), SentimentIntensityAnalyzer()
    stem = STEMS[domain]
    ratings = {}
    for line in (SAMPLES / f"{stem}_ratings_sample.txt").read_text(encoding="utf-8").splitlines():
        item_id, listed = line.split("\t")
        ratings[item_id] = tuple(ast.literal_eval(listed))
    rated = []
    for line in (SAMPLES / f"{stem}_sample.txt").read_text(encoding="utf-8").splitlines():
        item_id, mean_rating, text = line.split("\t", 2)
        rated.append(
            Rated(
                float(mean_rating),
                ratings[item_id],
                analyzer.read(text),
                vader.polarity_scores(text)["compound"],
            )
        )
    return tuple(rated)


# Measured on this sample (offline-v2): amazon 0.621, tweets 0.948; plain vaderSentiment 3.3.2
# scores 0.611 and 0.945 here. The floors leave room for small rule changes, not for a
# regression of the sentiment rules.
@pytest.mark.parametrize(("domain", "floor"), [("amazon", 0.58), ("tweets", 0.92)])
def test_weighted_f1_on_the_sample(domain: str, floor: float) -> None:
    rated = sample(domain)
    assert len(rated) == SAMPLE_SIZE
    gold = [sign(r.mean_rating) for r in rated]
    assert weighted_f1(gold, [r.sign_read for r in rated]) >= floor


@pytest.mark.parametrize("domain", STEMS)
@pytest.mark.parametrize("measure", [macro_f1, weighted_f1])
def test_f1_is_at_least_vaders_on_every_domain(domain: str, measure: Measure) -> None:
    rated = sample(domain)
    gold = [sign(r.mean_rating) for r in rated]
    ours = measure(gold, [r.sign_read for r in rated])
    assert ours >= measure(gold, [r.vader_sign for r in rated])


def sampling_noise(confidences: list[float], quantile: float = 0.95, draws: int = 400) -> float:
    """The ECE a perfectly calibrated `confidence` shows on this many items, at `quantile`.

    Outcomes drawn right with probability `confidence` itself, from a fixed seed.
    """
    generator = random.Random(20140601)
    found = sorted(
        expected_calibration_error(confidences, [generator.random() < c for c in confidences])
        for _ in range(draws)
    )
    return found[int(quantile * draws)]


@pytest.mark.parametrize("domain", STEMS)
def test_confidence_is_calibrated_on_every_domain(domain: str) -> None:
    """ECE on 500 items is the miscalibration plus sampling noise (about 0.04 alone here).

    Per bin the two are independent, so their sizes add about in quadrature: the tolerance is
    sqrt(target² + noise²), with the noise at its 95th percentile for these very confidences
    (0.075-0.08). The sample is fixed and the analyzer deterministic, so the test does not
    flake; it failed the offline-v1 calibration on tweets, movie and nyt (0.093, 0.111, 0.196).
    """
    rated = sample(domain)
    confidences = [r.reading.confidence for r in rated]
    hits = [is_right(r.reading.sentiment.value, gold_label(r.ratings)) for r in rated]
    tolerance = math.hypot(ECE_TARGET, sampling_noise(confidences))
    assert expected_calibration_error(confidences, hits) <= tolerance


def test_the_sample_keeps_its_attribution() -> None:
    assert "C.J. Hutto" in (SAMPLES / "LICENSE").read_text(encoding="utf-8")
    assert "ICWSM" in (SAMPLES / "README.md").read_text(encoding="utf-8")
