"""Prometheus counters of the ai service: analyses, provider calls, tokens and their
estimated cost, failures, fallbacks, cache.

Each Metrics has its own registry (tests build many services in one process); the
service serves it beside the process's shared one (servicekit.metrics) on
AI_METRICS_ADDR when that is set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from ai_service.domain import AnalysisResult
from ai_service.pricing import Prices
from servicekit.errors import ServiceError


class Metrics:
    def __init__(self, prices: Prices | None = None) -> None:
        self.registry = CollectorRegistry()
        self._prices = prices or Prices()
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
        # What the provider bills (AI_PRICE_*), and what it would have billed without
        # the prompt cache: their difference is what caching saves.
        self._cost = Counter(
            "tandem_ai_cost_usd",
            "USD the provider bills for the analyses produced, by model.",
            ["model"],
            registry=self.registry,
        )
        self._cost_uncached = Counter(
            "tandem_ai_cost_uncached_usd",
            "USD the same analyses would have cost without the prompt cache.",
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
            "Calls a failed model handed to the next of the chain or the offline fallback.",
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
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_creation", usage.cache_creation_input_tokens),
        ):
            self._tokens.labels(result.model, kind).inc(count)
        self._cost.labels(result.model).inc(self._prices.cost(usage))
        self._cost_uncached.labels(result.model).inc(self._prices.cost_uncached(usage))

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
