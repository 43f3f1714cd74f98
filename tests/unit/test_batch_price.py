"""A Message Batch's tokens cost half the standard price (ai_service.pricing.Prices)."""

from __future__ import annotations

from ai_service.domain import Usage
from ai_service.pricing import Prices


def test_batch_tokens_cost_half() -> None:
    prices = Prices(input_per_mtok=3.0, output_per_mtok=15.0)
    standard = Usage(input_tokens=1_000_000, output_tokens=100_000, service_tier="standard")
    batch = Usage(input_tokens=1_000_000, output_tokens=100_000, service_tier="batch")
    assert prices.cost(standard) == 4.5
    assert prices.cost(batch) == 2.25
    assert prices.cost_uncached(batch) == 2.25
    assert prices.cost(Usage(input_tokens=1_000_000)) == 3.0
