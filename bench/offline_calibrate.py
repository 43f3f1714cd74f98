"""Fit the offline analyzer's confidence table and write ai_service/offline/calibration.py.

    .venv/bin/python bench/offline_calibrate.py [--cache DIR] [--check]

Fits on the fitting half of the VADER corpora only (bench/_vader_corpora.py: fixed seed), so
bench/offline_quality.py can measure calibration on the held-out half:

- POSITIVE, NEGATIVE, NEUTRAL: per label, the share of natural items whose median rater gave
  that label, in equal-count bins of |compound|, made monotone (pool adjacent violators);
- MIXED: natural items carry no part-by-part truth, so synthetic documents of two or three
  snippets of one domain stand in; the share of MIXED readings whose parts really hold both a
  positive and a negative snippet, by the weaker side's strength.

`--check` exits 1 when the committed table differs from a fresh fit (the analyzer changed
without re-running this script).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import _vader_corpora as corpora

from ai_service.domain import Sentiment
from ai_service.offline import OFFLINE_MODEL, OfflineAnalyzer

TABLE_PATH = Path(__file__).resolve().parent.parent / "ai_service" / "offline" / "calibration.py"
_LABEL_SIGNS = {Sentiment.POSITIVE: 1, Sentiment.NEGATIVE: -1, Sentiment.NEUTRAL: 0}
_BINS = {Sentiment.POSITIVE: 12, Sentiment.NEGATIVE: 12, Sentiment.NEUTRAL: 3, Sentiment.MIXED: 6}
# Probability rises with strength for every label but NEUTRAL, where more valence means less
# chance that the reader saw no sentiment.
_DECREASING = {Sentiment.NEUTRAL}

Observation = tuple[float, bool]  # (strength, label correct)


def observations(cache: Path) -> tuple[dict[Sentiment, list[Observation]], dict[str, int]]:
    data = corpora.load(cache)
    analyzer = OfflineAnalyzer()
    found: dict[Sentiment, list[Observation]] = {label: [] for label in Sentiment}
    counts = {"items": 0, "items_mixed_skipped": 0, "docs": 0}
    for domain in corpora.DOMAINS:
        fitting, _held_out = corpora.halves(data[domain])
        for item in fitting:
            reading = analyzer.read(item.text)
            counts["items"] += 1
            if reading.sentiment is Sentiment.MIXED:
                counts["items_mixed_skipped"] += 1
                continue
            correct = _LABEL_SIGNS[reading.sentiment] == item.median_sign
            found[reading.sentiment].append((reading.strength, correct))
        for doc in corpora.synthetic_docs(fitting):
            reading = analyzer.read(doc.text)
            counts["docs"] += 1
            if reading.sentiment is Sentiment.MIXED:
                found[Sentiment.MIXED].append((reading.strength, doc.truth == "mixed"))
    return found, counts


def fit(points: Sequence[Observation], bins: int, decreasing: bool) -> list[tuple[float, float]]:
    """(mean strength, probability) per equal-count bin, monotone by pooling violators."""
    ordered = sorted(points)
    size = len(ordered) / bins
    blocks: list[list[float]] = []  # [strength sum, hits, count]
    for b in range(bins):
        chunk = ordered[round(b * size) : round((b + 1) * size)]
        if chunk:
            blocks.append([sum(s for s, _ in chunk), sum(h for _, h in chunk), len(chunk)])
    pooled: list[list[float]] = []
    for block in blocks:
        pooled.append(list(block))
        while len(pooled) > 1 and _violates(pooled[-2], pooled[-1], decreasing):
            last = pooled.pop()
            pooled[-1] = [a + b for a, b in zip(pooled[-1], last, strict=True)]
    return [(round(s / n, 4), round(h / n, 4)) for s, h, n in pooled]


def _violates(before: list[float], after: list[float], decreasing: bool) -> bool:
    rate_before, rate_after = before[1] / before[2], after[1] / after[2]
    return rate_after > rate_before if decreasing else rate_after < rate_before


def render(tables: dict[Sentiment, list[tuple[float, float]]], counts: dict[str, int]) -> str:
    lines = [
        '"""Calibration of the offline analyzer\'s `confidence`; generated, do not edit.',
        "",
        "Written by bench/offline_calibrate.py from the fitting half of the VADER ground-truth",
        f"corpora (vaderSentiment==3.3.2 sdist, sha256 {corpora.SDIST_SHA256[:16]}…, split seed",
        f"{corpora.SPLIT_SEED}) for {OFFLINE_MODEL}: {counts['items']} rated items"
        f" ({counts['items_mixed_skipped']} read as MIXED, left out)",
        f"and {counts['docs']} synthetic documents of 2-3 snippets"
        f" (seed {corpora.SYNTHETIC_SEED}).",
        "Each table holds (strength, probability that the label is right) knots; see",
        "ai_service/offline/confidence.py for how they are read.",
        '"""',
        "",
    ]
    for label in Sentiment:
        knots = [f"({strength}, {probability})," for strength, probability in tables[label]]
        if len(knots) == 1:
            # The trailing comma of a one-element tuple is not a formatting hint.
            lines.append(f"{label.name} = ({knots[0]})")
        else:
            lines.extend([f"{label.name} = (", *(f"    {k}" for k in knots), ")"])
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=corpora.DEFAULT_CACHE)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    arguments = parser.parse_args(argv)
    found, counts = observations(arguments.cache)
    tables = {label: fit(found[label], _BINS[label], label in _DECREASING) for label in Sentiment}
    source = render(tables, counts)
    if arguments.check:
        same = TABLE_PATH.read_text(encoding="utf-8") == source
        sys.stdout.write("calibration table is current\n" if same else "calibration is stale\n")
        return 0 if same else 1
    TABLE_PATH.write_text(source, encoding="utf-8")
    for label in Sentiment:
        sys.stdout.write(f"{label.name:8} n={len(found[label]):5}  {tables[label]}\n")
    sys.stdout.write(f"wrote {TABLE_PATH}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
