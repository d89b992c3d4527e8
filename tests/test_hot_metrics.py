"""The lock-free families (gateway/hot_metrics.py) expose exactly what prometheus_client's own
Counter and Histogram do for the same updates, less the `_created` series."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.hot_metrics import HotCounter, HotHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_a_counter_exposes_what_prometheus_counter_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotCounter("demo_messages_total", "Messages", ["transport", "result"], ours)
    reference = Counter("demo_messages_total", "Messages", ["transport", "result"], registry=theirs)
    hot.child("websocket", "ok")
    reference.labels(transport="websocket", result="ok")
    for labels, amount in ((("http", "200"), 1.0), (("http", "200"), 2.5), (("http", "503"), 1.0)):
        hot.inc(labels, amount)
        reference.labels(*labels).inc(amount)
    assert _exposition(ours) == _exposition(theirs)


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0005, 0.001, 0.0010001, 0.05, 1.0, 7.0],
        [0.001] * 3 + [math.inf],
    ],
)
def test_a_histogram_exposes_what_prometheus_histogram_does(values: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("demo_duration_seconds", "Time", "transport", BUCKETS, ours)
    reference = Histogram("demo_duration_seconds", "Time", ["transport"], buckets=BUCKETS, registry=theirs)
    hot.child("websocket")
    reference.labels(transport="websocket")
    for value in values:
        # A value on a bound counts in that bound's bucket (le: less than or equal).
        hot.observe("http", value)
        reference.labels(transport="http").observe(value)
    assert _exposition(ours) == _exposition(theirs)


def test_a_name_taken_by_another_metric_is_refused() -> None:
    registry = CollectorRegistry()
    Counter("demo_messages_total", "Messages", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        HotCounter("demo_messages_total", "Messages", ["transport"], registry)
