"""A scale run's results: the summary (JSON), the timeline (CSV) and a chart (PNG) of agents,
throughput and latency over time, plus the table printed at the end."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from loadtest.monitor import Sample

logger = logging.getLogger("loadtest.report")

PERCENTILES = ("50%", "95%", "99%", "100%")


def request_stats(stats_csv: Path) -> dict[str, dict[str, Any]]:
    """Locust's final `_stats.csv`: per request type and name, count, failures and percentiles (ms)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        with stats_csv.open(newline="") as file:
            rows = list(csv.DictReader(file))
    except OSError:
        return out
    for row in rows:
        key = f"{row['Type']} {row['Name']}".strip()
        out[key] = {
            "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]),
            "average_ms": round(float(row["Average Response Time"]), 1),
            **{f"p{p.rstrip('%')}_ms": _ms(row[p]) for p in PERCENTILES},
        }
    return out


def _ms(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def write_timeline(samples: Sequence[Sample], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f.name for f in fields(Sample)])
        for sample in samples:
            writer.writerow(list(asdict(sample).values()))


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")


def write_chart(samples: Sequence[Sample], events: dict[str, float], path: Path, title: str) -> bool:
    """Agents, messages/s and heartbeat latency over time; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no chart (pip install -e '.[loadtest]')")
        return False
    t = [s.t for s in samples]
    figure, (agents, rate, latency) = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
    agents.plot(t, [s.connected for s in samples], label="connected (gateways)")
    agents.plot(t, [s.users for s in samples], label="Locust users", linestyle="--")
    agents.set_ylabel("agents")
    rate.plot(t, [s.gateway_messages_per_s for s in samples], label="gateway messages/s")
    rate.plot(t, [s.locust_requests_per_s for s in samples], label="Locust requests/s", linestyle="--")
    rate.set_ylabel("messages/s")
    latency.plot(t, [s.heartbeat_p50_ms or 0 for s in samples], label="heartbeat p50")
    latency.plot(t, [s.heartbeat_p99_ms or 0 for s in samples], label="heartbeat p99")
    latency.set_ylabel("ms (10 s window)")
    latency.set_xlabel("seconds since start")
    cpu = rate.twinx()
    cpu.plot(t, [s.gateway_cpu_cores for s in samples], color="tab:red", alpha=0.5)
    cpu.set_ylabel("gateway CPU (cores)", color="tab:red")
    for axis in (agents, rate, latency):
        for name, when in events.items():
            axis.axvline(when, color="grey", linestyle=":", linewidth=1)
            if axis is agents:
                axis.annotate(name, (when, 0), rotation=90, fontsize=7, va="bottom")
        axis.legend(loc="upper left", fontsize=8)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def table(summary: dict[str, Any]) -> str:
    hold = summary["hold"]
    heartbeat = summary["requests"].get("WS heartbeat") or summary["requests"].get("POST heartbeat") or {}
    conv = summary["config_change"]
    lines = [
        f"agents          {summary['agents']['peak_connected']:,} connected"
        f" of {summary['agents']['target']:,}"
        f" ({summary['gateways']} gateways, {summary['workers']} Locust workers)",
        f"messages/s      {hold['gateway_messages_per_s']:,.0f} at the gateways during the hold",
        f"heartbeat       p50 {heartbeat.get('p50_ms')} ms, p95 {heartbeat.get('p95_ms')} ms,"
        f" p99 {heartbeat.get('p99_ms')} ms, max {heartbeat.get('p100_ms')} ms"
        f" (worst 10 s window p99 in the hold: {hold['worst_window_p99_ms']} ms)",
        f"gateway side    message handling in the hold: {hold.get('gateway_message_handling_ms')}",
        f"failures        {summary['failures']} of {summary['messages']:,} Locust requests",
        f"config change   {conv.get('status')}: all applied after {conv.get('server_seconds')} s;"
        f" agents' own p50 {conv.get('agent_p50_s')} s, p99 {conv.get('agent_p99_s')} s",
        f"gateway         {hold['gateway_cpu_cores']:.2f} cores, {hold['gateway_rss_mib']:,.0f} MiB RSS"
        f" = {hold['gateway_kib_per_agent']:.1f} KiB per agent",
        f"Locust          {hold['locust_cpu_cores']:.2f} cores, {hold['locust_rss_mib']:,.0f} MiB RSS;"
        f" machine busy {hold['machine_busy_cores']:.2f} of {summary['machine']['cpus']} cores",
        f"verdict         {'PASS' if summary['passed'] else 'FAIL'}"
        + ("" if summary["passed"] else f": {'; '.join(summary['problems'])}"),
    ]
    return "\n".join(lines)
