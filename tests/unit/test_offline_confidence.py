"""The offline analyzer's calibrator: bounded, monotone in strength, deterministic."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys

import pytest

from ai_service.domain import Sentiment
from ai_service.offline import OfflineAnalyzer, genre
from ai_service.offline.calibration import GENRES, TABLES, WORD_LOG_LIKELIHOODS
from ai_service.offline.confidence import confidence, interpolate

STRENGTHS = [i / 200 for i in range(201)]


def weight_vectors() -> list[tuple[float, ...]]:
    one_hot = [tuple(float(i == j) for j in range(len(GENRES))) for i in range(len(GENRES))]
    generator = random.Random(5)
    mixed = []
    for _ in range(20):
        raw = [generator.random() for _ in GENRES]
        mixed.append(tuple(value / sum(raw) for value in raw))
    return [*one_hot, (0.25, 0.25, 0.25, 0.25), *mixed]


def test_every_genre_has_a_table_for_every_label() -> None:
    assert set(TABLES) == set(GENRES)
    for by_label in TABLES.values():
        assert set(by_label) == {label.name for label in Sentiment}


@pytest.mark.parametrize("genre_name", GENRES)
@pytest.mark.parametrize("label", [label.name for label in Sentiment])
def test_tables_are_probabilities_rising_with_strength(genre_name: str, label: str) -> None:
    knots = TABLES[genre_name][label]
    assert knots
    strengths = [s for s, _ in knots]
    probabilities = [p for _, p in knots]
    assert strengths == sorted(strengths)
    assert all(0.0 <= s <= 1.0 for s in strengths)
    assert probabilities == sorted(probabilities)
    # Never certain either way: every table is pulled towards the label's pooled share.
    assert all(0.0 < p < 1.0 for p in probabilities)


@pytest.mark.parametrize("label", list(Sentiment))
def test_confidence_is_bounded_and_never_falls_as_strength_rises(label: Sentiment) -> None:
    for weights in weight_vectors():
        values = [confidence(label, strength, weights) for strength in STRENGTHS]
        assert all(0.0 < value < 1.0 for value in values)
        assert all(b >= a - 1e-12 for a, b in itertools.pairwise(values))


def test_interpolation_is_flat_beyond_the_knots_and_linear_between() -> None:
    knots = ((0.2, 0.4), (0.6, 0.8))
    assert interpolate(knots, 0.0) == 0.4
    assert interpolate(knots, 1.0) == 0.8
    assert interpolate(knots, 0.4) == pytest.approx(0.6)


def test_the_genre_mix_moves_confidence_between_the_genres_tables() -> None:
    label, strength = Sentiment.NEUTRAL, 0.0
    per_genre = [
        confidence(label, strength, tuple(float(i == j) for j in range(len(GENRES))))
        for i in range(len(GENRES))
    ]
    uniform = confidence(label, strength, (0.25,) * len(GENRES))
    assert uniform == pytest.approx(sum(per_genre) / len(per_genre))
    # The tables differ where the corpora do: a NEUTRAL reading of a movie-review sentence is
    # rarely right (its readers took a side), of a tweet usually.
    movie, tweets = per_genre[GENRES.index("movie")], per_genre[GENRES.index("tweets")]
    assert movie < 0.2 < 0.6 < tweets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@anna lol that was sooo good :) http://t.co/x", "tweets"),
        ("The film's director wastes a talented cast on a predictable plot.", "movie"),
        ("The battery died after two weeks and the charger does not fit the usb port.", "amazon"),
        ("The city council should reject the mayor's budget for public schools.", "nyt"),
    ],
)
def test_the_genre_guess(text: str, expected: str) -> None:
    weights = genre.weights(text)
    assert sum(weights) == pytest.approx(1.0)
    assert all(w >= 0.0 for w in weights)
    assert GENRES[weights.index(max(weights))] == expected


def test_a_text_with_nothing_to_go_on_weighs_the_genres_equally() -> None:
    for text in ("", "   ", "...", "\u2014"):
        assert genre.weights(text) == pytest.approx((0.25,) * len(GENRES))


def test_links_and_mentions_are_marks_not_words() -> None:
    found = genre.features("RT @anonymous: see http://url_removed or www.example.org, a@b.org")
    assert {"<mention>", "<url>"} <= found
    assert not {"anonymous", "url_removed", "url", "removed", "example"} & found
    assert "<mention>" not in genre.features("write to a@b.org")


def test_only_the_opening_is_read() -> None:
    opening = "The senate passed the bill. " * 100
    assert genre.weights(opening) == genre.weights(opening + "lol :) @anna #tbt " * 500)


def test_the_vocabulary_is_small() -> None:
    assert len(WORD_LOG_LIKELIHOODS) <= 420
    assert all(len(values) == len(GENRES) for values in WORD_LOG_LIKELIHOODS.values())


def test_the_same_text_gets_the_same_confidence_in_any_process() -> None:
    """Features are a set, whose order changes with the hash seed; the result must not."""
    texts = [
        "@anna lol that was sooo good :) but the ending? awful. http://t.co/x #tbt",
        "The council's plan is sound, though its budget is thin and its timeline vague.",
    ]
    script = (
        "import json, sys\n"
        "from ai_service.offline import OfflineAnalyzer, genre\n"
        "texts = json.load(sys.stdin)\n"
        "print(json.dumps([[genre.weights(t), OfflineAnalyzer().read(t).confidence]"
        " for t in texts]))\n"
    )
    here = [[list(genre.weights(t)), OfflineAnalyzer().read(t).confidence] for t in texts]
    for seed in ("1", "2", "3"):
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(texts),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(result.stdout) == here
