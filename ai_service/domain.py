"""What an analysis is, independent of protobuf, storage and provider."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Sentiment(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    NEUTRAL = "neutral"
    # Clearly positive and clearly negative parts in one text.
    MIXED = "mixed"


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one provider response counted; the cache counts come on top of input."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    # The provider's tier: "batch" (Message Batches, half price), "standard"; "" offline.
    service_tier: str = ""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.service_tier or other.service_tier,
        )


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """What an analyzer (Claude or offline) makes of a text, validated."""

    summary: str
    sentiment: Sentiment
    key_points: tuple[str, ...]
    # Probability that `sentiment` is right, in [0, 1].
    confidence: float
    # Which model or analyzer produced it.
    model: str
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class PartialResult:
    """Fields produced so far while streaming; unvalidated, any may be missing."""

    summary: str = ""
    sentiment: Sentiment | None = None
    key_points: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Analysis:
    """A stored analysis."""

    id: uuid.UUID
    user_id: uuid.UUID
    result: AnalysisResult
    create_time: datetime
    # Served from the result cache instead of a new upstream call.
    cached: bool = False
