"""The gateway benchmark's estimate of a variant's cost from its turns (bench/_turns.py)."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    # bench/ holds scripts, not a package: its modules import each other as top-level ones.
    path = Path(__file__).resolve().parents[2] / "bench" / "_turns.py"
    spec = importlib.util.spec_from_file_location("_turns", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


turns = _load()


def test_a_turn_ratio_pairs_the_slices_of_one_turn_and_skips_empty_ones() -> None:
    variant = [[90.0, 0.0, 110.0], [50.0]]
    baseline = [[100.0, 100.0, 100.0], [0.0]]
    assert turns.ratios_by_round(variant, baseline) == [[0.9, 1.1], []]


def test_the_figure_is_the_geometric_mean_of_every_turn() -> None:
    assert turns.geometric_mean([[0.5, 2.0], [1.0]]) == pytest.approx(1.0)
    assert turns.geometric_mean([[0.9], [0.9, 0.9]]) == pytest.approx(0.9)
    assert turns.geometric_mean([[], []]) is None


def test_the_median_turn_would_misjudge_a_flat_spread_that_the_mean_does_not() -> None:
    # Half the turns a little under par, half far over: the median sits at the edge of
    # the lower half, the geometric mean between the two, as their throughput is.
    ratios = [[0.95] * 6 + [1.25] * 5]
    assert turns.geometric_mean(ratios) == pytest.approx(
        math.exp((6 * math.log(0.95) + 5 * math.log(1.25)) / 11)
    )
    assert turns.geometric_mean(ratios) > 1.05


def test_the_interval_holds_the_figure_and_is_repeatable() -> None:
    rng = random.Random(7)
    by_round = [[0.95 * math.exp(rng.gauss(0, 0.13)) for _ in range(10)] for _ in range(12)]
    low, high = turns.interval(by_round)
    assert low < turns.geometric_mean(by_round) < high
    assert (low, high) == turns.interval(by_round)


def test_rounds_that_differ_as_wholes_widen_the_interval() -> None:
    # The same turns, once spread evenly over the rounds and once with each round's
    # turns shifted together: resampling rounds sees that a round's turns move as one.
    rng = random.Random(3)
    noise = [[rng.gauss(0, 0.05) for _ in range(10)] for _ in range(12)]
    shifts = [0.08 * (-1) ** n for n in range(12)]
    even = [
        [math.exp(x + shifts[(n + k) % 12]) for k, x in enumerate(row)]
        for n, row in enumerate(noise)
    ]
    grouped = [[math.exp(x + shifts[n]) for x in row] for n, row in enumerate(noise)]
    even_low, even_high = turns.interval(even)
    grouped_low, grouped_high = turns.interval(grouped)
    assert grouped_high - grouped_low > 1.5 * (even_high - even_low)


def test_one_round_gives_no_interval() -> None:
    assert turns.interval([[0.9, 1.0, 1.1]]) is None
    assert turns.interval([[0.9, 1.0], []]) is None
