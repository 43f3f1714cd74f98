"""Fit the offline analyzer's confidence and write ai_service/offline/calibration.py.

    .venv/bin/python bench/offline_calibrate.py [--cache DIR] [--check]

Fits on the fitting half of the VADER corpora only (bench/_vader_corpora.py: fixed seed), so
bench/offline_quality.py can measure calibration on the held-out half. Two parts:

- the genre classifier (ai_service/offline/genre.py): naive Bayes over the presence of words
  and marks, the corpus being the genre; the `VOCABULARY_SIZE` words that tell the genres apart
  best (mutual information, among words in at least `MIN_DOCUMENTS` texts) plus every mark,
  add-one smoothing, the genres equally likely beforehand;
- per genre and label, the share of readings that are right against the raters' gold label
  (`is_right` of tests/support/sentiment_scoring.py, MIXED included) in equal-count bins of
  strength, made monotone (pool adjacent violators) and pulled towards the label's share over
  all genres by `PRIOR_ITEMS` pseudo-items, so a label the genre rarely gets (MIXED in news)
  keeps a sane value. NEUTRAL gets one bin: its strength is below 0.05 and mostly exactly 0.

Everything is counted, sorted and rounded in a fixed order: two runs write the same file.
`--check` exits 1 when the committed file differs from a fresh fit (the analyzer changed
without re-running this script).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import _vader_corpora as corpora

from ai_service.domain import Sentiment
from ai_service.offline import OFFLINE_MODEL, OfflineAnalyzer, genre
from tests.support import sentiment_scoring as scoring

TABLE_PATH = Path(__file__).resolve().parent.parent / "ai_service" / "offline" / "calibration.py"
VOCABULARY_SIZE = 400
MIN_DOCUMENTS = 5
# Bins hold at least this many readings and are at most this many per table.
MIN_BIN_ITEMS = 80
MAX_BINS = 10
PRIOR_ITEMS = 10
_DIGITS = 4


@dataclass(frozen=True, slots=True)
class Observation:
    domain: str
    features: frozenset[str]
    sentiment: Sentiment
    strength: float
    right: bool


def observations(cache: Path) -> list[Observation]:
    data = corpora.load(cache)
    analyzer = OfflineAnalyzer()
    found = []
    for domain in corpora.DOMAINS:
        fitting, _held_out = corpora.halves(data[domain])
        for item in fitting:
            reading = analyzer.read(item.text)
            found.append(
                Observation(
                    domain,
                    frozenset(genre.features(item.text)),
                    reading.sentiment,
                    reading.strength,
                    scoring.is_right(reading.sentiment.value, item.gold),
                )
            )
    return found


def fit_genres(found: Sequence[Observation]) -> dict[str, tuple[float, ...]]:
    """Per chosen feature, log P(feature | genre) minus its mean over the genres."""
    texts = Counter(o.domain for o in found)
    in_genre = {domain: Counter[str]() for domain in corpora.DOMAINS}
    for observation in found:
        in_genre[observation.domain].update(observation.features)
    overall = Counter[str]()
    for counts in in_genre.values():
        overall.update(counts)
    marks = sorted(f for f in overall if f.startswith("<"))
    candidates = [f for f, n in overall.items() if n >= MIN_DOCUMENTS and f not in marks]
    information = {f: _mutual_information(f, overall, in_genre, texts) for f in candidates}
    chosen = sorted(candidates, key=lambda f: (-information[f], f))[:VOCABULARY_SIZE]
    vocabulary = sorted([*chosen, *marks])
    totals = {d: sum(in_genre[d][f] for f in vocabulary) + len(vocabulary) for d in in_genre}
    likelihoods = {}
    for feature in vocabulary:
        logs = [math.log((in_genre[d][feature] + 1) / totals[d]) for d in corpora.DOMAINS]
        mean = math.fsum(logs) / len(logs)
        likelihoods[feature] = tuple(_round(value - mean) for value in logs)
    return likelihoods


def _mutual_information(
    feature: str, overall: Counter[str], in_genre: dict[str, Counter[str]], texts: Counter[str]
) -> float:
    total = sum(texts.values())
    information = 0.0
    for domain, count in texts.items():
        for present in (True, False):
            joint = in_genre[domain][feature] if present else count - in_genre[domain][feature]
            marginal = overall[feature] if present else total - overall[feature]
            if joint:
                information += joint / total * math.log(joint * total / (marginal * count))
    return information


def fit_tables(found: Sequence[Observation]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    tables: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for label in Sentiment:
        of_label = [o for o in found if o.sentiment is label]
        prior = sum(o.right for o in of_label) / len(of_label)
        for domain in corpora.DOMAINS:
            points = sorted((o.strength, o.right) for o in of_label if o.domain == domain)
            bins = 1 if label is Sentiment.NEUTRAL else len(points) // MIN_BIN_ITEMS
            bins = max(1, min(MAX_BINS, bins))
            tables.setdefault(domain, {})[label.name] = fit(points, bins, prior)
    return tables


def fit(points: Sequence[tuple[float, bool]], bins: int, prior: float) -> list[tuple[float, float]]:
    """(mean strength, probability) per equal-count bin, monotone by pooling violators.

    A bin's probability counts `PRIOR_ITEMS` pseudo-readings right at the rate `prior`; the
    pooling compares those same values, so what is written never falls with strength.
    """
    if not points:
        return [(0.0, _round(prior))]

    def rate(block: list[float]) -> float:
        return (block[1] + PRIOR_ITEMS * prior) / (block[2] + PRIOR_ITEMS)

    size = len(points) / bins
    blocks: list[list[float]] = []  # [strength sum, hits, count]
    for b in range(bins):
        chunk = points[round(b * size) : round((b + 1) * size)]
        if chunk:
            blocks.append([sum(s for s, _ in chunk), sum(h for _, h in chunk), len(chunk)])
    pooled: list[list[float]] = []
    for block in blocks:
        pooled.append(list(block))
        while len(pooled) > 1 and rate(pooled[-1]) < rate(pooled[-2]):
            last = pooled.pop()
            pooled[-1] = [a + b for a, b in zip(pooled[-1], last, strict=True)]
    return [(_round(block[0] / block[2]), _round(rate(block))) for block in pooled]


def _round(value: float) -> float:
    return round(value, _DIGITS) + 0.0  # + 0.0 turns -0.0 into 0.0


def render(
    likelihoods: dict[str, tuple[float, ...]],
    tables: dict[str, dict[str, list[tuple[float, float]]]],
    count: int,
) -> str:
    lines = [
        '"""Calibration of the offline analyzer\'s `confidence`; generated, do not edit.',
        "",
        "Written by bench/offline_calibrate.py (`make calibrate-offline`) from the fitting half of",
        "the VADER ground-truth corpora (vaderSentiment==3.3.2 sdist, sha256",
        f"{corpora.SDIST_SHA256[:16]}…, split seed {corpora.SPLIT_SEED}) for {OFFLINE_MODEL}:",
        f"{count} rated texts. WORD_LOG_LIKELIHOODS drives ai_service/offline/genre.py;",
        "TABLES holds, per genre and label, (strength, probability that the label is right)",
        "knots read by ai_service/offline/confidence.py.",
        '"""',
        "",
        f"GENRES = ({', '.join(_quoted(d) for d in corpora.DOMAINS)})",
        "",
        "WORD_LOG_LIKELIHOODS: dict[str, tuple[float, float, float, float]] = {",
        *(f"    {_quoted(feature)}: {values!r}," for feature, values in likelihoods.items()),
        "}",
        "",
        "TABLES: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {",
    ]
    for domain, by_label in tables.items():
        lines.append(f"    {_quoted(domain)}: {{")
        for label, knots in by_label.items():
            pairs = [f"({s!r}, {p!r})," for s, p in knots]
            if len(pairs) == 1:
                # A one-element tuple's trailing comma is not a formatting hint.
                lines.append(f"        {_quoted(label)}: ({pairs[0]}),")
            else:
                lines.append(f"        {_quoted(label)}: (")
                lines.extend(f"            {pair}" for pair in pairs)
                lines.append("        ),")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _quoted(name: str) -> str:
    """A string literal as the formatter writes it (names hold no quote or backslash)."""
    return f'"{name}"'


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=corpora.DEFAULT_CACHE)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    arguments = parser.parse_args(argv)
    found = observations(arguments.cache)
    tables = fit_tables(found)
    source = render(fit_genres(found), tables, len(found))
    if arguments.check:
        same = TABLE_PATH.read_text(encoding="utf-8") == source
        sys.stdout.write("calibration is current\n" if same else "calibration is stale\n")
        return 0 if same else 1
    TABLE_PATH.write_text(source, encoding="utf-8")
    for domain, by_label in tables.items():
        for label, knots in by_label.items():
            sys.stdout.write(f"{domain:7} {label:8} {knots}\n")
    sys.stdout.write(f"wrote {TABLE_PATH}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
