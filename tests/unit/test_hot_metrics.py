"""servicekit.hot_metrics exposes what prometheus_client's own counters and histograms
would for the same observations, bucket bounds included."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from servicekit.hot_metrics import HotCounter, HotHistogram

BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0)
# On the bounds, between them, under the first and over the last.
OBSERVED = (0.0, 0.001, 0.0011, 0.005, 0.05, 0.1, 0.99, 1.0, 7.5, 0.0004)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The registry's text lines, with both families' prefix alike and without their
    creation times."""
    text = generate_latest(registry).decode().replace("hot_", "x_").replace("lib_", "x_")
    return [line for line in text.splitlines() if "_created" not in line]


def test_a_histogram_exposes_what_prometheus_clients_would() -> None:
    library, hot = CollectorRegistry(), CollectorRegistry()
    ours = HotHistogram("hot_seconds", "How long.", ["route"], buckets=BUCKETS, registry=hot)
    theirs = Histogram("lib_seconds", "How long.", ["route"], buckets=BUCKETS, registry=library)
    for value in OBSERVED:
        ours.labels("/a").observe(value)
        theirs.labels("/a").observe(value)
    ours.labels("/b").observe(0.002)
    theirs.labels("/b").observe(0.002)
    assert exposition(hot) == exposition(library)


def test_a_counter_exposes_what_prometheus_clients_would() -> None:
    library, hot = CollectorRegistry(), CollectorRegistry()
    ours = HotCounter("hot_calls", "Calls.", ["code"], registry=hot)
    theirs = Counter("lib_calls", "Calls.", ["code"], registry=library)
    for code in ("OK", "OK", "NOT_FOUND"):
        ours.labels(code).inc()
        theirs.labels(code).inc()
    ours.labels("OK").inc(2.5)
    theirs.labels("OK").inc(2.5)
    assert exposition(hot) == exposition(library)


def test_both_have_creation_times_as_prometheus_clients_do() -> None:
    registry = CollectorRegistry()
    HotCounter("hot_calls", "Calls.", ["code"], registry=registry).labels("OK").inc()
    HotHistogram(
        "hot_seconds", "How long.", [], buckets=BUCKETS, registry=registry
    ).labels().observe(1)
    text = generate_latest(registry).decode()
    assert re.search(r'^hot_calls_created\{code="OK"\} \d', text, re.MULTILINE)
    assert re.search(r"^hot_seconds_created \d", text, re.MULTILINE)


def test_the_wrong_number_of_label_values_is_refused() -> None:
    counter = HotCounter("hot_calls", "Calls.", ["code", "method"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="has labels"):
        counter.labels("OK")
