"""A variant's req/s against a baseline's, measured in turns: the turns' geometric mean.

In each turn of a round every variant is loaded for one slice, and a turn's ratio is a
variant's req/s over the baseline's slice in the same turn. On this machine the turns'
ratios spread widely (sd 0.13) and flat-topped, not peaked: their median jumps by a few
turns either way. So a variant's figure is their geometric mean (the mean of their
logs), which averages every turn, as a ratio of throughputs does; by a bootstrap its
spread was 0.010-0.014 in runs of 120 turns, the median's 0.008-0.017, and the two
figures differed by up to 0.025 in either direction in the same run. Two paths alike
(both off) came out at 1.000 of each other by the geometric mean, 1.006 by the median.

Its interval: a round's processes run at a speed of their own (where their stacks,
objects and strings landed; bench/_layout.py), the same for all of that round's turns,
so turns are not independent draws. The bootstrap resamples rounds, then the turns of
each round drawn, and gives the middle 95% of the geometric means so made.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

# Turn ratios grouped by round: each round's turns, in turn order.
ByRound = Sequence[Sequence[float]]


def ratios_by_round(
    variant: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]]
) -> list[list[float]]:
    """Each round's turn ratios, from each round's req/s per turn of the variant and of the
    baseline. A turn in which either served nothing has no ratio (the errors say why)."""
    return [
        [mine / base for mine, base in zip(turns, base_turns, strict=True) if mine > 0 and base > 0]
        for turns, base_turns in zip(variant, baseline, strict=True)
    ]


def geometric_mean(by_round: ByRound) -> float | None:
    """The geometric mean of all the turns' ratios; None with no turn."""
    logs = [math.log(ratio) for turns in by_round for ratio in turns]
    return math.exp(math.fsum(logs) / len(logs)) if logs else None


def interval(
    by_round: ByRound, *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """The 95% interval of `geometric_mean(by_round)`, by a two-stage bootstrap (rounds,
    then turns within each); with a fixed seed, the same turns give the same interval.
    None with fewer than two rounds of turns: their spread is not known."""
    rounds = [[math.log(ratio) for ratio in turns] for turns in by_round if turns]
    if len(rounds) < 2:
        return None
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        total, count = 0.0, 0
        for turns in rng.choices(rounds, k=len(rounds)):
            total += math.fsum(rng.choices(turns, k=len(turns)))
            count += len(turns)
        means.append(math.exp(total / count))
    means.sort()
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
