"""VADER 3.3.2's word and emoji lexicons and rule constants, loaded once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from vaderSentiment.vaderSentiment import (  # type: ignore[import-untyped]
    BOOSTER_DICT,
    C_INCR,
    N_SCALAR,
    NEGATE,
    SPECIAL_CASES,
    SentimentIntensityAnalyzer,
)


@dataclass(frozen=True, slots=True)
class Lexicon:
    valences: dict[str, float]
    emoji_descriptions: dict[str, str]
    boosters: dict[str, float]
    negations: frozenset[str]
    special_cases: dict[str, float]
    negation_scalar: float
    caps_increment: float


@functools.cache
def load() -> Lexicon:
    """The lexicon of the installed vaderSentiment; its files sit beside its module.

    vaderSentiment finds them through its own source path, so this works from any working
    directory. Loading takes about 10 ms, so it happens on the first analysis, not on import.
    """
    analyzer = SentimentIntensityAnalyzer()
    return Lexicon(
        valences=dict(analyzer.lexicon),
        emoji_descriptions=dict(analyzer.emojis),
        boosters=dict(BOOSTER_DICT),
        negations=frozenset(NEGATE),
        special_cases=dict(SPECIAL_CASES),
        negation_scalar=float(N_SCALAR),
        caps_increment=float(C_INCR),
    )
