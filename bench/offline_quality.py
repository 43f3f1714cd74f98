"""Quality and speed of the offline analyzer against the VADER ground-truth corpora.

    .venv/bin/python bench/offline_quality.py [--cache DIR]

Fetches the corpora from the vaderSentiment==3.3.2 sdist (bench/_vader_corpora.py; cached in
bench/.cache by default) and prints, with PASS/FAIL against the targets:

- per domain, on the whole corpus (as the paper's Table 4): 3-class weighted F1 (gold: sign of
  the mean rating; a MIXED reading counts as the side it leans to) and Pearson r of the document
  compound with the mean rating, next to VADER's published numbers and to plain vaderSentiment
  3.3.2; target: F1 >= published - 0.01;
- per domain, on the held-out half: macro and weighted F1 against plain vaderSentiment 3.3.2
  on the same items; target: at least VADER's;
- calibration on the held-out half, which bench/offline_calibrate.py never saw: per domain, the
  ECE (10 equal-width bins) of `confidence` against "the label is right", with the share right
  and the mean confidence; target: <= 0.05 on every domain. Right means the label equals the
  raters' gold label (tests/support/sentiment_scoring.py): "mixed" when at least a quarter of
  the raters rated the text positive and at least a quarter negative, else the sign of the
  median rating ("neutral" when 0); a MIXED reading is also right when the gold label is
  "neutral". Every reading counts, MIXED included. Synthetic documents of 2-3 held-out
  snippets are shown too, without a target;
- speed: µs per corpus snippet and the share of it that `confidence` takes, calls/s on 2 KB
  texts, ms per 1 KB, ms for 50,000 characters, and import plus first analysis in a fresh
  process; targets: < 50 ms per KB and < 1 s cold.

Exits 0 whatever the verdicts; a non-zero exit means the benchmark itself broke.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import _vader_corpora as corpora
from vaderSentiment.vaderSentiment import (  # type: ignore[import-untyped]
    SentimentIntensityAnalyzer,
)

from ai_service.domain import Sentiment
from ai_service.offline import OfflineAnalyzer, genre
from ai_service.offline.confidence import confidence
from ai_service.offline.polarity import NEUTRAL_BAND, Reading
from tests.support import sentiment_scoring as scoring

F1_SLACK = 0.01
MS_PER_KB_TARGET = 50.0
COLD_START_TARGET_S = 1.0
_SIGNS = {Sentiment.POSITIVE: 1, Sentiment.NEGATIVE: -1, Sentiment.NEUTRAL: 0}
_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    name: str
    value: str
    target: str = ""
    verdict: str = ""


def _sign_of(reading: Reading) -> int:
    return _SIGNS[reading.lean if reading.sentiment is Sentiment.MIXED else reading.sentiment]


def _vader_sign(compound: float) -> int:
    return (compound > NEUTRAL_BAND) - (compound < -NEUTRAL_BAND)


def accuracy_rows(
    data: dict[str, list[corpora.Item]], readings: dict[str, list[Reading]]
) -> list[Row]:
    vader = SentimentIntensityAnalyzer()
    rows = []
    for domain in corpora.DOMAINS:
        items, found = data[domain], readings[domain]
        gold = [item.mean_sign for item in items]
        means = [item.mean_rating for item in items]
        f1 = scoring.weighted_f1(gold, [_sign_of(r) for r in found])
        r = corpora.pearson([x.score for x in found], means)
        plain = [vader.polarity_scores(item.text)["compound"] for item in items]
        plain_f1 = scoring.weighted_f1(gold, [_vader_sign(c) for c in plain])
        plain_r = corpora.pearson(plain, means)
        floor = corpora.PUBLISHED_F1[domain] - F1_SLACK
        published = f"{corpora.PUBLISHED_F1[domain]:.2f} / {corpora.PUBLISHED_R[domain]:.3f}"
        rows.append(
            Row(
                f"{domain}: weighted F1 / r, whole corpus",
                f"{f1:.4f} / {r:.3f}; published {published};"
                f" vaderSentiment {plain_f1:.4f} / {plain_r:.3f}",
                f"F1 >= {floor:.2f}",
                "PASS" if f1 >= floor else "FAIL",
            )
        )
        held = _held_out_ids(items)
        pairs = [
            (item, reading, _vader_sign(compound))
            for item, reading, compound in zip(items, found, plain, strict=True)
            if item.item_id in held
        ]
        held_gold = [item.mean_sign for item, _, _ in pairs]
        ours = [_sign_of(reading) for _, reading, _ in pairs]
        theirs = [sign for _, _, sign in pairs]
        for name, measure in (("macro", scoring.macro_f1), ("weighted", scoring.weighted_f1)):
            mine, vaders = measure(held_gold, ours), measure(held_gold, theirs)
            rows.append(
                Row(
                    f"{domain}: {name} F1, held-out half",
                    f"{mine:.4f}; vaderSentiment {vaders:.4f}",
                    ">= vaderSentiment",
                    "PASS" if mine >= vaders else "FAIL",
                )
            )
    return rows


def _held_out_ids(items: Sequence[corpora.Item]) -> set[str]:
    return {item.item_id for item in corpora.halves(items)[1]}


def _ece_row(name: str, confidences: list[float], hits: list[bool], target: bool) -> Row:
    ece = scoring.expected_calibration_error(confidences, hits)
    accuracy = sum(hits) / len(hits) if hits else 0.0
    mean_confidence = statistics.fmean(confidences) if confidences else 0.0
    return Row(
        name,
        f"{ece:.3f}  (n={len(hits)}, right {accuracy:.3f}, mean confidence {mean_confidence:.3f})",
        f"<= {scoring.ECE_TARGET}" if target else "",
        ("PASS" if ece <= scoring.ECE_TARGET else "FAIL") if target else "",
    )


def calibration_rows(
    data: dict[str, list[corpora.Item]],
    readings: dict[str, list[Reading]],
    analyzer: OfflineAnalyzer,
) -> list[Row]:
    rows = []
    all_confidences: list[float] = []
    all_hits: list[bool] = []
    for domain in corpora.DOMAINS:
        held = _held_out_ids(data[domain])
        confidences, hits = [], []
        mixed = 0
        for item, reading in zip(data[domain], readings[domain], strict=True):
            if item.item_id in held:
                confidences.append(reading.confidence)
                hits.append(scoring.is_right(reading.sentiment.value, item.gold))
                mixed += reading.sentiment is Sentiment.MIXED
        rows.append(
            _ece_row(f"{domain}: ECE, held-out half ({mixed} MIXED)", confidences, hits, True)
        )
        all_confidences += confidences
        all_hits += hits
    rows.append(_ece_row("ECE, all held-out items", all_confidences, all_hits, target=False))
    rows.extend(_synthetic_rows(data, analyzer))
    return rows


def _synthetic_rows(data: dict[str, list[corpora.Item]], analyzer: OfflineAnalyzer) -> list[Row]:
    """Held-out snippets of one domain joined in twos and threes: MIXED has a part-wise truth.

    Shown, not targets: random snippets make 42% of these documents mixed, far more than
    coherent texts are, and a snippet's raters rarely split, so `confidence` (calibrated on
    the raters of real texts) rates MIXED low where these documents make it often right.
    """
    doc_confidences, doc_hits, mixed_confidences, mixed_hits = [], [], [], []
    true_mixed = 0
    for domain in corpora.DOMAINS:
        _, held_out = corpora.halves(data[domain])
        for doc in corpora.synthetic_docs(held_out, seed=corpora.SYNTHETIC_SEED + 1):
            reading = analyzer.read(doc.text)
            hit = scoring.is_right(reading.sentiment.value, doc.truth)
            doc_confidences.append(reading.confidence)
            doc_hits.append(hit)
            true_mixed += doc.truth == "mixed"
            if reading.sentiment is Sentiment.MIXED:
                mixed_confidences.append(reading.confidence)
                mixed_hits.append(hit)
    precision = sum(mixed_hits) / len(mixed_hits) if mixed_hits else 0.0
    recall = sum(mixed_hits) / true_mixed if true_mixed else 0.0
    return [
        _ece_row("synthetic documents: ECE, all", doc_confidences, doc_hits, False),
        _ece_row("synthetic documents: ECE, read as MIXED", mixed_confidences, mixed_hits, False),
        Row("synthetic documents: MIXED", f"precision {precision:.3f}, recall {recall:.3f}"),
    ]


def _texts_of_size(data: dict[str, list[corpora.Item]], size: int, count: int) -> list[str]:
    """`count` distinct texts of about `size` characters made of consecutive review snippets."""
    snippets = [item.text.strip() for item in data["amazon"] + data["movie"]]
    texts: list[str] = []
    start = 0
    while len(texts) < count:
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < size:
            parts.append(snippets[start % len(snippets)])
            start += 1
        texts.append(" ".join(parts)[:size])
    return texts


def _best_seconds_per_call(function: Callable[[str], object], texts: Sequence[str]) -> float:
    """Best of three passes over `texts` (the machine is shared: the best pass is the truest)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for text in texts:
            function(text)
        best = min(best, (time.perf_counter() - started) / len(texts))
    return best


def _long_texts(data: dict[str, list[corpora.Item]]) -> dict[str, str]:
    return {
        "prose": _texts_of_size(data, 50_000, 1)[0],
        "one unpunctuated line": ("lorem ipsum dolor sit amet " * 2_000)[:50_000],
        "2,500 short lines": "\n".join(f"item {i} was fine" for i in range(2_500))[:50_000],
        'repeated "a. "': ("a. " * 17_000)[:50_000],
    }


def speed_rows(data: dict[str, list[corpora.Item]], analyzer: OfflineAnalyzer) -> list[Row]:
    two_kb = _texts_of_size(data, 2_000, 40)
    one_kb = _texts_of_size(data, 1_000, 40)
    per_call_2kb = _best_seconds_per_call(analyzer.analyze, two_kb)
    per_kb_ms = _best_seconds_per_call(analyzer.analyze, one_kb) * 1_000
    snippets = [item.text for domain in corpora.DOMAINS for item in data[domain][:500]]
    per_snippet_us = _best_seconds_per_call(analyzer.analyze, snippets) * 1e6
    readings = {text: analyzer.read(text) for text in snippets}

    def confidence_of(text: str) -> float:
        reading = readings[text]
        return confidence(reading.sentiment, reading.strength, genre.weights(text))

    confidence_us = _best_seconds_per_call(confidence_of, snippets) * 1e6
    rows = [
        Row("analyze(): µs per corpus snippet (2,000 snippets)", f"{per_snippet_us:.0f}"),
        Row("  of which confidence (genre weights + tables), µs", f"{confidence_us:.1f}"),
        Row("analyze(): calls/s on 2 KB texts", f"{1 / per_call_2kb:.0f}"),
        Row(
            "analyze(): ms per 1 KB text",
            f"{per_kb_ms:.2f}",
            f"< {MS_PER_KB_TARGET:.0f}",
            "PASS" if per_kb_ms < MS_PER_KB_TARGET else "FAIL",
        ),
    ]
    for name, text in _long_texts(data).items():
        ms = _best_seconds_per_call(analyzer.analyze, [text]) * 1_000
        rows.append(Row(f"analyze(): ms for 50,000 chars, {name}", f"{ms:.0f}"))
    cold = sorted(_cold_start() for _ in range(3))
    rows.append(
        Row(
            "cold import + first analyze(), fresh process (s)",
            f"{cold[1]:.3f} median of 3 ({cold[0]:.3f}-{cold[2]:.3f}), interpreter start excluded",
            f"< {COLD_START_TARGET_S:.0f}",
            "PASS" if cold[1] < COLD_START_TARGET_S else "FAIL",
        )
    )
    return rows


_COLD_START = """
import time
started = time.perf_counter()
from ai_service.offline import OfflineAnalyzer
OfflineAnalyzer().analyze("The motor is powerful. Sadly, the lid leaks. Support was kind.")
print(time.perf_counter() - started)
"""


def _cold_start() -> float:
    result = subprocess.run(
        [sys.executable, "-c", _COLD_START],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # the analyzer must not depend on the working directory
    )
    return float(result.stdout.strip())


def consistency_rows(data: dict[str, list[corpora.Item]], analyzer: OfflineAnalyzer) -> list[Row]:
    sample = [item.text for domain in corpora.DOMAINS for item in data[domain][:50]]
    same_sentiment = all(
        analyzer.analyze(t).sentiment is analyzer.read(t).sentiment for t in sample
    )
    repeatable = all(analyzer.analyze(t) == analyzer.analyze(t) for t in sample)
    verdict = "PASS" if same_sentiment and repeatable else "FAIL"
    return [Row("analyze() repeatable and agrees with read()", f"{len(sample)} texts", "", verdict)]


def render(sections: list[tuple[str, list[Row]]]) -> str:
    width = max(len(row.name) for _, rows in sections for row in rows)
    lines = []
    for title, rows in sections:
        lines += ["", title, "-" * len(title)]
        for row in rows:
            verdict = f"  [{row.verdict} {row.target}]" if row.verdict else ""
            lines.append(f"{row.name:<{width}}  {row.value}{verdict}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=corpora.DEFAULT_CACHE)
    arguments = parser.parse_args(argv)
    started = time.perf_counter()
    data = corpora.load(arguments.cache)
    analyzer = OfflineAnalyzer()
    readings = {d: [analyzer.read(item.text) for item in data[d]] for d in corpora.DOMAINS}
    sections = [
        ("Sentiment accuracy (3-class weighted F1, Pearson r)", accuracy_rows(data, readings)),
        ("Calibration of confidence", calibration_rows(data, readings, analyzer)),
        ("Speed", speed_rows(data, analyzer)),
        ("Consistency", consistency_rows(data, analyzer)),
    ]
    sys.stdout.write(render(sections))
    verdicts = [row.verdict for _, rows in sections for row in rows if row.verdict]
    sys.stdout.write(
        f"\n{verdicts.count('PASS')} PASS, {verdicts.count('FAIL')} FAIL"
        f" in {time.perf_counter() - started:.0f} s\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
