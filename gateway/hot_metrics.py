"""Counters and a histogram updated on every agent message, kept as plain numbers.

prometheus_client's own metrics take a lock on every update (a counter increment is about 0.35 µs,
a histogram observation about 1 µs): three of them per message were a tenth of an HTTP heartbeat's
handler (docs/performance.md). These families are updated only from the node's event loop, so
they need no lock, and they are read when /metrics is scraped, through a collector registered on
the gateway's registry. The exposition is prometheus_client's (same names, types, labels and
buckets), without the `_created` series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, utils
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

# How prometheus_client writes a bucket's bound (0.5 -> "0.5", inf -> "+Inf").
_bound_text: Callable[[float], str] = utils.floatToGoString


class HotCounter:
    """A counter family whose children are numbers in a dict, keyed by their label values."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def child(self, *labels: str) -> None:
        """Show the child at 0 before its first increment."""
        self.values.setdefault(labels, 0.0)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(list(labels), value)
        yield family

    def describe(self) -> Iterator[Metric]:
        # Registering calls describe(); an empty family tells the registry the names this owns.
        yield CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)


class _Series:
    """One histogram child: a count per bucket (not cumulative; the last one is +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.total = 0.0


class HotHistogram:
    """A histogram family with one label, its children plain lists of bucket counts."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelname: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelname = labelname
        self._bounds = tuple(float(b) for b in buckets)
        self._les = [_bound_text(b) for b in (*self._bounds, float("inf"))]
        self.series: dict[str, _Series] = {}
        registry.register(self)

    def child(self, label: str) -> _Series:
        series = self.series.get(label)
        if series is None:
            series = self.series[label] = _Series(len(self._bounds))
        return series

    def observe(self, label: str, value: float) -> None:
        series = self.series.get(label) or self.child(label)
        # A value equal to a bound belongs to that bound's bucket (le: less than or equal).
        series.counts[bisect_left(self._bounds, value)] += 1
        series.total += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._labelname])
        for label, series in list(self.series.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self._les, series.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric([label], buckets, series.total)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=[self._labelname])
