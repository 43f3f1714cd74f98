"""Prometheus counters of the ai service: analyses, provider calls, tokens and their
estimated cost, failures, fallbacks, cache.

Each Metrics has its own registry (tests build many services in one process); the
service serves it beside the process's shared one (servicekit.metrics) on
AI_METRICS_ADDR when that is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from ai_service.domain import AnalysisResult, Usage
from servicekit.errors import ServiceError


@dataclass(frozen=True, slots=True)
class Prices:
    """Dollars per million tokens (AI_PRICE_*). Cache writes cost 1.25 times an input
    token and cache reads 0.1 times, on top of the input tokens (which the provider
    counts apart from them)."""

    input_per_mtok: float = 3.0
    output_per_mtok: float = 15.0

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input_per_mtok
            + usage.cache_creation_input_tokens * self.input_per_mtok * 1.25
            + usage.cache_read_input_tokens * self.input_per_mtok * 0.1
            + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000


class Metrics:
    def __init__(self, prices: Prices | None = None) -> None:
        self._prices = prices or Prices()
        self.registry = CollectorRegistry()
        self._analyses = Counter(
            "tandem_ai_analyses",
            "Analyses produced by a backend (not served from the cache).",
            ["model"],
            registry=self.registry,
        )
        # Cache reads and writes are billed differently and on top of input tokens,
        # so each kind is counted apart.
        self._tokens = Counter(
            "tandem_ai_tokens",
            "Tokens the provider counted, by kind.",
            ["model", "kind"],
            registry=self.registry,
        )
        self._cost = Counter(
            "tandem_ai_estimated_cost_dollars",
            "What the provider's tokens cost, estimated from AI_PRICE_*.",
            ["model"],
            registry=self.registry,
        )
        self._provider_calls = Counter(
            "tandem_ai_provider_calls",
            "Analyses asked of a backend (one call each, however many HTTP requests and "
            "retries it took), by outcome: ok or the status it failed with.",
            ["model", "outcome"],
            registry=self.registry,
        )
        self._failures = Counter(
            "tandem_ai_upstream_failures",
            "Failed backend calls, by the status they became.",
            ["model", "code"],
            registry=self.registry,
        )
        self._fallbacks = Counter(
            "tandem_ai_fallbacks",
            "Analyses answered by the fallback after the primary failed.",
            ["primary", "fallback"],
            registry=self.registry,
        )
        self._cache_hits = Counter(
            "tandem_ai_cache_hits",
            "Requests answered from a stored analysis.",
            ["model"],
            registry=self.registry,
        )

    def produced(self, result: AnalysisResult) -> None:
        self._analyses.labels(result.model).inc()
        self._provider_calls.labels(result.model, "ok").inc()
        usage = result.usage
        self._cost.labels(result.model).inc(self._prices.cost(usage))
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_creation", usage.cache_creation_input_tokens),
        ):
            self._tokens.labels(result.model, kind).inc(count)

    def upstream_failed(self, model: str, error: ServiceError) -> None:
        self._failures.labels(model, error.code.name).inc()
        self._provider_calls.labels(model, error.code.name).inc()

    def fell_back(self, primary: str, fallback: str) -> None:
        self._fallbacks.labels(primary, fallback).inc()

    def cache_hit(self, model: str) -> None:
        self._cache_hits.labels(model).inc()

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (for tests and diagnostics)."""
        found = self.registry.get_sample_value(f"{name}_total", labels)
        return found or 0.0
