"""How the offline analyzer's sentiment is scored against human raters: one definition for the
benchmarks (bench/offline_quality.py, bench/offline_calibrate.py) and the tests.

The gold label of a rated text, one of the four labels the analyzer gives:
- "mixed" when the readers split: at least `MIXED_SHARE` (a quarter) of the raters rated the
  text positive and at least as many negative, a disagreement no one-sided label describes;
- otherwise the sign of the median rating: "positive", "negative", or "neutral" for 0. The
  median, not the mean: a single rater off zero makes the mean non-zero (under the mean's sign
  only 1.6% of the VADER corpora's items are neutral), so a NEUTRAL label would be wrong by
  construction even for "Just posted a photo".

A label is right when it equals the gold label; MIXED is also right when the gold label is
"neutral" (the readers saw no clear side either). `confidence` is calibrated against that.
F1 keeps the paper's protocol instead (gold: sign of the mean rating; 3 classes).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

MIXED_SHARE = 0.25
# Expected calibration error (10 equal-width bins) `confidence` keeps on every domain.
ECE_TARGET = 0.05
_SIGN_NAMES = {1: "positive", -1: "negative", 0: "neutral"}


def sign(value: float) -> int:
    return (value > 0) - (value < 0)


def gold_label(ratings: Sequence[int]) -> str:
    """'positive', 'negative', 'neutral' or 'mixed', from the raters' individual ratings."""
    positive = sum(1 for rating in ratings if rating > 0)
    negative = sum(1 for rating in ratings if rating < 0)
    if min(positive, negative) >= MIXED_SHARE * len(ratings):
        return "mixed"
    return _SIGN_NAMES[sign(statistics.median(ratings))]


def is_right(label: str, gold: str) -> bool:
    """Whether a reading labelled `label` is right for a text whose gold label is `gold`."""
    return label == gold or (label == "mixed" and gold == "neutral")


def class_f1(gold: Sequence[int], predicted: Sequence[int]) -> dict[int, float]:
    """F1 of each class that occurs in the gold labels."""
    scores = {}
    for label in sorted(set(gold)):
        hits = sum(1 for g, p in zip(gold, predicted, strict=True) if g == p == label)
        predicted_count = sum(1 for p in predicted if p == label)
        gold_count = sum(1 for g in gold if g == label)
        precision = hits / predicted_count if predicted_count else 0.0
        recall = hits / gold_count
        scores[label] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return scores


def weighted_f1(gold: Sequence[int], predicted: Sequence[int]) -> float:
    """F1 per gold class, weighted by the class's share of the gold labels (the paper's)."""
    scores = class_f1(gold, predicted)
    return sum(f1 * gold.count(label) for label, f1 in scores.items()) / len(gold)


def macro_f1(gold: Sequence[int], predicted: Sequence[int]) -> float:
    """The unweighted mean of the gold classes' F1: the rare neutral class counts as much."""
    scores = class_f1(gold, predicted)
    return sum(scores.values()) / len(scores)


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """ECE over equal-width confidence bins: the bins' |accuracy - confidence|, by weight."""
    if not confidences:
        return 0.0
    sums = [[0.0, 0.0, 0] for _ in range(bins)]
    for confidence, hit in zip(confidences, correct, strict=True):
        row = sums[min(int(confidence * bins), bins - 1)]
        row[0] += confidence
        row[1] += hit
        row[2] += 1
    return sum(abs(c - h) for c, h, n in sums if n) / len(confidences)
