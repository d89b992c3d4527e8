"""What a scale run watches every few seconds: the gateways' own counters, the CPU and memory of
every process it started, and Locust's latest statistics row."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from harness import procstat
from harness.gateway import GatewayProcess
from harness.process import Process
from loadtest.cluster import metrics_text

logger = logging.getLogger("loadtest.monitor")


@dataclass(frozen=True)
class GatewayCounters:
    connected: float = 0.0
    messages: float = 0.0
    shed: float = 0.0
    pushes: float = 0.0
    # RemoteConfigStatus{APPLIED} reports received: each agent sends one per config change.
    applied_reports: float = 0.0
    # Agent rows the gateways committed to the store (opamp_gateway_store_flush_size_sum).
    rows_written: float = 0.0
    # opamp_gateway_message_duration_seconds, all gateways and transports: upper bound -> count
    latency_buckets: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class LocustRow:
    users: int = 0
    requests_per_s: float = 0.0
    failures: int = 0
    requests: int = 0
    # The latest 10-second window's heartbeat round trip percentiles, in ms.
    heartbeat_p50: float | None = None
    heartbeat_p99: float | None = None


@dataclass(frozen=True)
class Sample:
    t: float
    phase: str
    users: int
    connected: int
    gateway_messages_per_s: float
    locust_requests_per_s: float
    failures: int
    heartbeat_p50_ms: float | None
    heartbeat_p99_ms: float | None
    gateway_cpu_cores: float
    gateway_rss_mib: float
    locust_cpu_cores: float
    locust_rss_mib: float
    redis_cpu_cores: float
    machine_busy_cores: float
    # Gateways still running (one fewer after --kill-gateway-after), and seconds since that kill.
    gateways_up: int = 0
    since_kill_s: float | None = None


def gateway_counters(gateways: Sequence[GatewayProcess]) -> GatewayCounters:
    """Sums over every gateway; a gateway that does not answer counts as nothing this time."""
    total = {
        "connected": 0.0,
        "messages": 0.0,
        "shed": 0.0,
        "pushes": 0.0,
        "applied_reports": 0.0,
        "rows_written": 0.0,
    }
    buckets: dict[float, float] = {}
    for gateway in gateways:
        try:
            text = metrics_text(gateway.admin_port)
        except OSError as exc:
            logger.warning("could not scrape %s: %s", gateway.name, exc)
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "opamp_gateway_connected_agents":
                    total["connected"] += sample.value
                elif sample.name == "opamp_gateway_messages_total":
                    total["messages"] += sample.value
                elif sample.name == "opamp_gateway_shed_requests_total":
                    total["shed"] += sample.value
                elif sample.name == "opamp_gateway_pushes_total":
                    total["pushes"] += sample.value
                elif (
                    sample.name == "opamp_gateway_remote_config_reports_total"
                    and sample.labels.get("status") == "APPLIED"
                ):
                    total["applied_reports"] += sample.value
                elif sample.name == "opamp_gateway_store_flush_size_sum":
                    total["rows_written"] += sample.value
                elif sample.name == "opamp_gateway_message_duration_seconds_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return GatewayCounters(**total, latency_buckets=tuple(sorted(buckets.items())))


def server_quantile(before: GatewayCounters, after: GatewayCounters, q: float) -> float | None:
    """The q-quantile (seconds) of the gateways' own message handling time between two scrapes,
    interpolated within its histogram bucket; None without messages."""
    earlier = dict(before.latency_buckets)
    cumulative = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after.latency_buckets]
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def number(text: str) -> float | None:
    """A Locust CSV cell as a number; None for its `N/A`."""
    try:
        return float(text)
    except ValueError:
        return None


def locust_latest(history: Path) -> LocustRow:
    """The newest rows of Locust's `_stats_history.csv` (one per request name and one Aggregated)."""
    try:
        with history.open(newline="") as file:
            rows = list(csv.DictReader(file))
    except OSError:
        return LocustRow()
    if not rows:
        return LocustRow()
    newest = rows[-1]["Timestamp"]
    latest = [row for row in rows if row["Timestamp"] == newest]
    aggregated = next((r for r in latest if r["Name"] == "Aggregated"), latest[-1])
    # While Locust spawns, heartbeats are named "heartbeat (ramp)" (see loadtest/users.py).
    heartbeat = next((r for r in latest if r["Name"] == "heartbeat"), None) or next(
        (r for r in latest if r["Name"] == "heartbeat (ramp)"), None
    )
    return LocustRow(
        users=int(aggregated["User Count"] or 0),
        requests_per_s=float(aggregated["Requests/s"] or 0),
        failures=int(aggregated["Total Failure Count"] or 0),
        requests=int(aggregated["Total Request Count"] or 0),
        heartbeat_p50=number(heartbeat["50%"]) if heartbeat else None,
        heartbeat_p99=number(heartbeat["99%"]) if heartbeat else None,
    )


class CpuMeter:
    """CPU cores used by a group of processes between two readings."""

    def __init__(self, procs: Sequence[Process]) -> None:
        self.procs = list(procs)
        self.last = self._total()

    def _total(self) -> float:
        return sum(procstat.process_cpu(p.pid) for p in self.procs)

    def cores(self, seconds: float) -> float:
        now = self._total()
        used, self.last = now - self.last, now
        return used / seconds if seconds > 0 else 0.0


def rss_mib(procs: Sequence[Process]) -> float:
    total = 0
    for proc in procs:
        try:
            total += procstat.memory_kib(proc.pid).get("rss", 0)
        except OSError:
            continue
    return total / 1024
