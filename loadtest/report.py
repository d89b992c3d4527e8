"""A scale run's results: the summary (JSON), the timeline (CSV) and a chart (PNG) of agents,
throughput and latency over time, plus the table printed at the end."""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import machine
from loadtest import cost
from loadtest.monitor import Sample, number

if TYPE_CHECKING:
    from loadtest.config import RunConfig
    from loadtest.watch import Watch

logger = logging.getLogger("loadtest.report")

PERCENTILES = ("50%", "95%", "99%", "100%")
AIM_P99_MS = 500.0
AIM_CONVERGENCE_S = 30.0


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
            **{f"p{p.rstrip('%')}_ms": number(row[p]) for p in PERCENTILES},
        }
    return out


def write_timeline(samples: Sequence[Sample], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f.name for f in fields(Sample)])
        for sample in samples:
            writer.writerow(list(asdict(sample).values()))


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")


def write_chart(
    samples: Sequence[Sample],
    events: dict[str, float],
    path: Path,
    title: str,
    reconnect: Sequence[tuple[float, int]] = (),
) -> bool:
    """Agents, messages/s and heartbeat latency over time, and the reconnect curve after a gateway
    kill (seconds since the kill, agents connected); False when matplotlib is not installed."""
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
    if reconnect and "gateway killed" in events:
        killed = events["gateway killed"]
        agents.plot(
            [killed + since for since, _ in reconnect],
            [connected for _, connected in reconnect],
            marker=".",
            label="connected to the other gateways, after the kill",
        )
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
    requests = summary["requests"]
    heartbeat = requests.get("WS heartbeat") or requests.get("POST heartbeat") or {}
    ramp = requests.get("WS heartbeat (ramp)") or requests.get("POST heartbeat (ramp)") or {}
    enroll = requests.get("WS full report (ramp)") or requests.get("POST full report (ramp)") or {}
    conv = summary["config_change"]
    lines = [
        f"agents          {summary['agents']['peak_connected']:,} connected"
        f" of {summary['agents']['target']:,}"
        f" ({summary['gateways']} gateways, {summary['workers']} Locust workers)",
        f"messages/s      {hold['gateway_messages_per_s']:,.0f} at the gateways during the hold",
        f"hold heartbeat  p50 {heartbeat.get('p50_ms')} ms, p95 {heartbeat.get('p95_ms')} ms,"
        f" p99 {heartbeat.get('p99_ms')} ms, max {heartbeat.get('p100_ms')} ms"
        f" (worst 10 s window p99 in the hold: {hold['worst_window_p99_ms']} ms)",
        f"while ramping   heartbeat p99 {ramp.get('p99_ms')} ms; first report p50 {enroll.get('p50_ms')} ms,"
        f" p99 {enroll.get('p99_ms')} ms",
        f"gateway side    message handling in the hold: {hold.get('gateway_message_handling_ms')}",
        f"failures        {summary['failures']} of {summary['messages']:,} Locust requests",
        f"config change   {conv.get('status')}: all applied after {conv.get('server_seconds')} s;"
        f" agents' own p50 {conv.get('agent_p50_s')} s, p99 {conv.get('agent_p99_s')} s;"
        f" {conv.get('rows_written')} store rows written meanwhile",
        f"gateway         {hold['gateway_cpu_cores']:.2f} cores, {hold['gateway_rss_mib']:,.0f} MiB RSS"
        f" = {hold['gateway_kib_per_agent']:.1f} KiB per agent",
        f"Locust          {hold['locust_cpu_cores']:.2f} cores, {hold['locust_rss_mib']:,.0f} MiB RSS;"
        f" machine busy {hold['machine_busy_cores']:.2f} of {summary['machine']['cpus']} cores",
        f"per agent       {cost.line(summary['cost']) if summary.get('cost') else 'no hold measured'}",
        *([f"gateway kill    {summary['gateway_kill']['verdict']}"] if "gateway_kill" in summary else []),
        f"verdict         {'PASS' if summary['passed'] else 'FAIL'}"
        + ("" if summary["passed"] else f": {'; '.join(summary['problems'])}"),
    ]
    return "\n".join(lines)


def summarize(
    cfg: RunConfig,
    watch: Watch,
    requests: dict[str, dict[str, Any]],
    idle_rss: float,
    gateways: int,
    workers: int,
    fleet_summary: tuple[int, Any],
) -> dict[str, Any]:
    samples, change, kill, hold_started = watch.samples, watch.change, watch.kill, watch.hold_started
    hold = [s for s in samples if s.phase == "hold"] or list(samples[-3:])
    peak = max((s.connected for s in samples), default=0)
    total = requests.get("Aggregated", {})
    convergence = requests.get("CONFIG convergence", {})
    heartbeat = requests.get(f"{cfg.request_type} heartbeat", {})
    rss = statistics.fmean(s.gateway_rss_mib for s in hold) if hold else 0.0
    windows = [s.heartbeat_p99_ms for s in hold if s.heartbeat_p99_ms is not None]
    problems = []
    if kill.started:
        # A killed gateway's agents fail their waiting messages and their first reconnects: what
        # counts after the kill is the reconnect curve and the agent records.
        if kill.failures_before:
            problems.append(f"{kill.failures_before} failed requests before the gateway kill")
        if not kill.passed:
            problems.append(f"gateway kill: {kill.verdict()}")
    elif total.get("failures", 1):
        problems.append(f"{total.get('failures', 'unknown')} failed requests")
    if peak < cfg.agents:
        problems.append(f"only {peak:,} of {cfg.agents:,} agents connected")
    if (heartbeat.get("p99_ms") or math.inf) >= AIM_P99_MS:
        problems.append(f"heartbeat p99 {heartbeat.get('p99_ms')} ms is not under {AIM_P99_MS:g} ms")
    if cfg.change_at is not None and (
        change.server_seconds is None or change.server_seconds >= AIM_CONVERGENCE_S
    ):
        problems.append(f"config change {change.status} (aim: all applied in under {AIM_CONVERGENCE_S:g} s)")
    hold_seconds = (samples[-1].t - hold_started) if hold_started is not None and samples else 0.0
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "machine": machine.describe(None),
        "gateways": gateways,
        "workers": workers,
        "agents": {"target": cfg.agents, "peak_connected": peak, "admin_api_total": _total(fleet_summary)},
        "messages": total.get("requests", 0),
        "failures": total.get("failures"),
        "hold": {
            "seconds": round(hold_seconds, 1),
            "gateway_messages_per_s": round(statistics.fmean(s.gateway_messages_per_s for s in hold), 1)
            if hold
            else 0,
            "worst_window_p99_ms": max(windows, default=None),
            "gateway_cpu_cores": round(statistics.fmean(s.gateway_cpu_cores for s in hold), 3) if hold else 0,
            "gateway_rss_mib": round(rss, 1),
            "gateway_idle_rss_mib": round(idle_rss, 1),
            "gateway_kib_per_agent": round((rss - idle_rss) * 1024 / peak, 2) if peak else 0.0,
            "locust_cpu_cores": round(statistics.fmean(s.locust_cpu_cores for s in hold), 3) if hold else 0,
            "locust_rss_mib": round(statistics.fmean(s.locust_rss_mib for s in hold), 1) if hold else 0,
            "redis_cpu_cores": round(statistics.fmean(s.redis_cpu_cores for s in hold), 3) if hold else 0,
            "machine_busy_cores": round(statistics.fmean(s.machine_busy_cores for s in hold), 3)
            if hold
            else 0,
        },
        "requests": requests,
        "config_change": {
            "status": change.status,
            "put_seconds": change.put_seconds,
            "server_seconds": change.server_seconds,
            "matched": change.matched,
            "applied_reports": change.applied,
            "rows_written": change.rows_written,
            "rollout": change.rollout,
            "agents_applied": convergence.get("requests", 0),
            "agent_p50_s": _seconds(convergence.get("p50_ms")),
            "agent_p99_s": _seconds(convergence.get("p99_ms")),
            "agent_max_s": _seconds(convergence.get("p100_ms")),
        },
        "cost": watch.costs,
        **({"gateway_kill": {**kill.summary(), "verdict": kill.verdict()}} if kill.started else {}),
        "aims": {"heartbeat_p99_ms": AIM_P99_MS, "convergence_s": AIM_CONVERGENCE_S},
        "problems": problems,
        "passed": not problems,
    }


def _total(reply: tuple[int, Any]) -> int | None:
    status, body = reply
    return int(body.get("total", 0)) if status == 200 and isinstance(body, dict) and "total" in body else None


def to_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _seconds(milliseconds: float | None) -> float | None:
    return None if milliseconds is None else round(milliseconds / 1000, 2)
