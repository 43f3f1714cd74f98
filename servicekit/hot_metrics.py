"""Counters and histograms for what every request records, without a lock per value.

prometheus_client guards each value with a lock, takes it on every `inc` and `observe`,
and walks a histogram's buckets in Python: 1.4 µs of the gateway's loop per request for
its two HTTP metrics, and as much again per gRPC call, on a path whose CPU is its
capacity (`make bench-gateway`). These families are written by one thread only, the
process's event loop, where requests and calls are counted, as plain additions (a
bisection finds the bucket); the metrics thread reads them at each scrape and hands
prometheus_client metric families, whose exposition is the library's own. A scrape that
lands between a histogram's bucket and its sum sees the sum one observation behind, which
no rate() or quantile over the series notices.

Label values are resolved once per combination (`labels`), as with prometheus_client.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class CounterCell:
    """One label combination's count."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramCell:
    """One label combination's observations: a count per bucket (not cumulative; the
    last is +Inf's) and their sum."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bound at or above `amount`: Prometheus' buckets count `le` (<=).
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


Cell = TypeVar("Cell", CounterCell, HistogramCell)


class _Family(Collector, Generic[Cell]):
    """A family's name, help and label names, and its cells by label values (registered
    with `registry` once made)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._cells: dict[tuple[str, ...], Cell] = {}
        registry.register(self)

    def labels(self, *values: str) -> Cell:
        cell = self._cells.get(values)
        if cell is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} has labels {self._labelnames}, given {values}")
            cell = self._cells[values] = self._new_cell()
        return cell

    def _new_cell(self) -> Cell:
        raise NotImplementedError


class HotCounter(_Family[CounterCell]):
    """A counter family (exposed as `<name>_total` and `<name>_created`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        registry: CollectorRegistry,
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)

    def _new_cell(self) -> CounterCell:
        return CounterCell()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, cell in list(self._cells.items()):
            family.add_metric(list(values), cell.value, created=cell.created)
        yield family


class HotHistogram(_Family[HistogramCell]):
    """A histogram family with fixed `buckets` (upper bounds; +Inf is added)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        bounds = (*self._bounds, float("inf"))
        self._le = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new_cell(self) -> HistogramCell:
        return HistogramCell(self._bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, cell in list(self._cells.items()):
            total = 0
            cumulative = []
            for le, count in zip(self._le, list(cell.counts), strict=True):
                total += count
                cumulative.append((le, float(total)))
            family.add_metric(list(values), cumulative, cell.sum)
            # prometheus_client's own histograms have `_created` too.
            family.samples.append(
                family.samples[-1]._replace(name=f"{self._name}_created", value=cell.created)
            )
        yield family
