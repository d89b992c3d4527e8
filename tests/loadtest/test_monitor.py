"""Reading what a scale run watches: the gateways' latency histogram, Locust's CSV files."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import report
from loadtest.monitor import GatewayCounters, locust_latest, server_quantile

INF = float("inf")


def _counters(*buckets: tuple[float, float]) -> GatewayCounters:
    return GatewayCounters(latency_buckets=tuple(buckets))


def test_server_quantile_interpolates_within_the_bucket_of_the_difference() -> None:
    before = _counters((0.001, 10), (0.01, 10), (0.1, 10), (INF, 10))
    # 100 new messages: 50 under 1 ms, 40 more under 10 ms, 10 more under 100 ms.
    after = _counters((0.001, 60), (0.01, 100), (0.1, 110), (INF, 110))
    assert server_quantile(before, after, 0.5) == pytest.approx(0.001)
    assert server_quantile(before, after, 0.7) == pytest.approx(0.001 + 0.009 * 0.5)
    assert server_quantile(before, after, 0.95) == pytest.approx(0.01 + 0.09 * 0.5)
    assert server_quantile(before, before, 0.5) is None
    assert server_quantile(GatewayCounters(), GatewayCounters(), 0.5) is None


def test_server_quantile_past_the_last_finite_bucket_is_its_bound() -> None:
    after = _counters((0.5, 90), (5.0, 95), (INF, 100))
    assert server_quantile(GatewayCounters(), after, 0.99) == 5.0


_HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,"
    "98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,"
    "Total Median Response Time,Total Average Response Time,Total Min Response Time,"
    "Total Max Response Time,Total Average Content Size"
)
HISTORY = (
    _HISTORY_HEADER
    + """
1795321827,0,,Aggregated,0.000000,0.000000,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,0,0,0,0.0,0,0,0
1795321831,50,WS,heartbeat,37.000000,0.000000,1,1,1,1,1,2,2,5,18,18,18,197,0,1,1.04,0.34,18.35,21.0
1795321831,50,,Aggregated,87.000000,0.000000,1,1,1,1,1,2,2,5,18,18,18,297,2,1,8.17,0.34,43.03,17.46
"""
)

_STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,"
    "Average Response Time,Min Response Time,Max Response Time,Average Content Size,"
    "Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
STATS = (
    _STATS_HEADER
    + """
WS,heartbeat,197,0,1,1.04,0.34,18.35,21.0,37.0,0.0,1,1,1,1,1,2,2,5,18,18,18
CONFIG,convergence,50,0,900,950.5,10,2000,0.0,1.0,0.0,900,1000,1100,1200,1500,1800,1900,2000,2000,2000,2000
,Aggregated,297,2,1,8.17,0.34,43.03,17.46,87.0,0.0,1,1,1,1,1,2,2,5,18,18,N/A
"""
)


def test_locust_latest_reads_the_newest_rows(tmp_path: Path) -> None:
    history = tmp_path / "locust_stats_history.csv"
    assert locust_latest(history).users == 0
    history.write_text(HISTORY)
    row = locust_latest(history)
    assert (row.users, row.requests_per_s, row.failures, row.requests) == (50, 87.0, 2, 297)
    assert (row.heartbeat_p50, row.heartbeat_p99) == (1.0, 5.0)


def test_request_stats_keys_rows_by_type_and_name(tmp_path: Path) -> None:
    stats = tmp_path / "locust_stats.csv"
    assert report.request_stats(stats) == {}
    stats.write_text(STATS)
    rows = report.request_stats(stats)
    assert rows["WS heartbeat"] == {
        "requests": 197,
        "failures": 0,
        "average_ms": 1.0,
        "p50_ms": 1.0,
        "p95_ms": 2.0,
        "p99_ms": 5.0,
        "p100_ms": 18.0,
    }
    assert rows["CONFIG convergence"]["p99_ms"] == 2000.0
    assert rows["Aggregated"]["failures"] == 2 and rows["Aggregated"]["p100_ms"] is None


def test_locust_latest_falls_back_to_ramp_heartbeats(tmp_path: Path) -> None:
    history = tmp_path / "locust_stats_history.csv"
    history.write_text(HISTORY.replace("WS,heartbeat,", "WS,heartbeat (ramp),"))
    assert locust_latest(history).heartbeat_p99 == 5.0
