"""What an analysis costs in USD, from the tokens the provider counted.

Cache writes and reads are billed on top of input tokens, each at its own multiple of
the input price (1.25x for a 5-minute cache write, 0.1x for a read, as Anthropic prices
them); the prices are settings (AI_PRICE_*), one set for every model of the chain.
Tokens of a Message Batch (`service_tier` batch: BatchAnalyzeTexts) cost half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ai_service.domain import Usage

if TYPE_CHECKING:
    from ai_service.settings import AiSettings

_MILLION = 1_000_000
# Message Batches bill every token at half the standard price.
BATCH_PRICE = 0.5


@dataclass(frozen=True, slots=True)
class Prices:
    input_per_mtok: float = 3.0
    output_per_mtok: float = 15.0
    cache_write_multiplier: float = 1.25
    cache_read_multiplier: float = 0.1

    @classmethod
    def from_settings(cls, settings: AiSettings) -> Prices:
        return cls(
            settings.price_input_per_mtok,
            settings.price_output_per_mtok,
            settings.price_cache_write_multiplier,
            settings.price_cache_read_multiplier,
        )

    def cost(self, usage: Usage) -> float:
        """USD of one response as billed."""
        input_equivalent = (
            usage.input_tokens
            + usage.cache_creation_input_tokens * self.cache_write_multiplier
            + usage.cache_read_input_tokens * self.cache_read_multiplier
        )
        standard = (
            input_equivalent * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        ) / _MILLION
        return standard * BATCH_PRICE if usage.service_tier == "batch" else standard

    def cost_uncached(self, usage: Usage) -> float:
        """USD of the same response had nothing been cached or written to the cache."""
        every_input = (
            usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        )
        return self.cost(
            Usage(
                input_tokens=every_input,
                output_tokens=usage.output_tokens,
                service_tier=usage.service_tier,
            )
        )
