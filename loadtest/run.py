"""The scale runner: `python -m loadtest.run --agents 100000`.

Starts, on this machine and on loopback only, a redis-server, N gateways sharing one SQLite file
and a Locust master with its workers; ramps to the target agent count, holds, changes a config
mid-hold and measures how long every agent takes to apply it; prints progress every few seconds;
stops everything it started; and writes the summary (JSON), the timeline (CSV) and a chart (PNG)
into loadtest/results/<run>/. Every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import machine, procstat
from bench.targets import HOST, free_port
from loadtest import report
from loadtest.agent import CHANGED_AT_MARKER, SERVICE_NAME
from loadtest.cluster import REPO, Cluster, ClusterError, Gateway, Proc, admin, running
from loadtest.monitor import (
    CpuMeter,
    GatewayCounters,
    Sample,
    gateway_counters,
    locust_latest,
    rss_mib,
    server_quantile,
)

logger = logging.getLogger("loadtest.run")

CONFIG_NAME = "loadtest"
# Sockets per process: gateways and Locust workers must stay under the 20,000 open files a process
# may have here, with room for the store, logs and Redis.
PER_PROCESS = 15_000
USER_CLASS = {"websocket": "WebSocketAgent", "http": "HttpAgent"}
AIM_P99_MS = 500.0
AIM_CONVERGENCE_S = 30.0


@dataclass(frozen=True)
class RunConfig:
    agents: int = 1000
    transport: str = "websocket"
    heartbeat: float = 30.0
    spawn_rate: float = 500.0
    hold: float = 600.0
    # Seconds into the hold when the config changes; None: half way. Negative: no change.
    config_change_after: float | None = None
    converge_timeout: float = 120.0
    gateways: int = 0
    workers: int = 0
    sample_every: float = 5.0
    results: Path = REPO / "loadtest" / "results"
    gateway_args: tuple[str, ...] = ()
    profile_seconds: float = 0.0
    label: str = ""

    @property
    def ramp(self) -> float:
        return self.agents / self.spawn_rate

    @property
    def change_at(self) -> float | None:
        if self.config_change_after is not None and self.config_change_after < 0:
            return None
        return self.hold / 2 if self.config_change_after is None else self.config_change_after


@dataclass
class _Change:
    """The mid-run config change, done on its own thread while the monitor goes on."""

    started: float = 0.0
    status: str = "not run"
    server_seconds: float | None = None
    matched: int = 0
    rollout: dict[str, Any] = field(default_factory=dict)


def _processes(agents: int, asked: int) -> int:
    return asked if asked > 0 else max(1, math.ceil(agents / PER_PROCESS))


def _change_config(gateway: Gateway, expected: int, timeout: float, change: _Change) -> None:
    written = time.time()
    body = (
        f"{CHANGED_AT_MARKER.decode()}{written:.6f}\n"
        "receivers:\n  otlp: {protocols: {grpc: {endpoint: 0.0.0.0:4317}}}\n"
        "processors:\n  batch: {}\n"
        "exporters:\n  otlphttp: {endpoint: https://collector.example.com:4318}\n"
        "service:\n  pipelines:\n"
        "    traces: {receivers: [otlp], processors: [batch], exporters: [otlphttp]}\n"
    )
    config = {
        "selector": {"match": {"service.name": SERVICE_NAME}},
        "priority": 10,
        "files": {"collector.yaml": {"content_type": "text/yaml", "body": body}},
    }
    change.started = time.monotonic()
    status, stored = admin(gateway.admin_port, "PUT", f"/api/v1/configs/{CONFIG_NAME}", config)
    if status not in (200, 201):
        change.status = f"PUT answered {status}: {stored}"
        return
    change.status = "converging"
    deadline = change.started + timeout
    while time.monotonic() < deadline:
        status, got = admin(gateway.admin_port, "GET", f"/api/v1/configs/{CONFIG_NAME}")
        if status == 200:
            rollout = got.get("rollout", {})
            change.rollout, change.matched = rollout, int(rollout.get("matched", 0))
            if change.matched >= expected and rollout.get("applied", 0) >= change.matched:
                change.server_seconds = round(time.monotonic() - change.started, 2)
                change.status = "converged"
                return
        time.sleep(1.0)
    change.status = f"not converged in {timeout:g} s"


def _locust(
    cluster: Cluster, cfg: RunConfig, gateways: Sequence[Gateway], workdir: Path
) -> tuple[Proc, list[Proc]]:
    port = free_port()
    workers = _processes(cfg.agents, cfg.workers)
    run_time = math.ceil(cfg.ramp + cfg.hold + 5)
    common = [
        sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"),
        USER_CLASS[cfg.transport],
        "--opamp-targets", ",".join(g.target for g in gateways),
        "--heartbeat-interval", str(cfg.heartbeat), "--loglevel", "WARNING",
    ]  # fmt: skip
    master = cluster.start(
        "locust-master",
        [
            *common, "--master", "--headless", "--master-bind-host", HOST, "--master-bind-port", str(port),
            "--expect-workers", str(workers), "--expect-workers-max-wait", "120",
            "-u", str(cfg.agents), "-r", str(cfg.spawn_rate), "-t", f"{run_time}s", "--stop-timeout", "10",
            "--csv", str(workdir / "locust"), "--csv-full-history", "--only-summary",
        ],
    )  # fmt: skip
    started = [
        cluster.start(
            f"locust-worker-{i}", [*common, "--worker", "--master-host", HOST, "--master-port", str(port)]
        )
        for i in range(workers)
    ]
    return master, started


def _gateway_args(cfg: RunConfig) -> list[str]:
    per_gateway = math.ceil(cfg.agents / _processes(cfg.agents, cfg.gateways))
    return [
        # A scale run enrolls its fleet as fast as Locust spawns it.
        "--enrollment-rate", "0",
        "--max-connections", str(min(19_000, int(per_gateway * 1.2) + 100)),
        "--idle-timeout", str(max(600.0, 4 * cfg.heartbeat)),
        *cfg.gateway_args,
    ]  # fmt: skip


def _profile(cluster: Cluster, gateway: Gateway, seconds: float, workdir: Path) -> Proc | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        logger.warning("py-spy is not installed; no profile")
        return None
    out = workdir / f"{gateway.proc.name}-profile"
    argv = [exe, "record", "--pid", str(gateway.proc.pid), "--duration", str(int(seconds)), "--rate", "50"]
    cluster.start("py-spy-svg", [*argv, "--format", "flamegraph", "--output", f"{out}.svg"])
    return cluster.start("py-spy-raw", [*argv, "--format", "raw", "--output", f"{out}.folded"])


def _progress(t: float, s: Sample, target: int, change: _Change) -> str:
    p99 = "-" if s.heartbeat_p99_ms is None else f"{s.heartbeat_p99_ms:.0f}"
    p50 = "-" if s.heartbeat_p50_ms is None else f"{s.heartbeat_p50_ms:.0f}"
    conv = (
        f"  config {change.status} {change.rollout.get('applied', 0):,}/{change.matched:,}"
        if change.started
        else ""
    )
    return (
        f"[{t:6.0f} s] {s.phase:<6} agents {s.connected:,}/{target:,} users {s.users:,}  "
        f"gw {s.gateway_messages_per_s:,.0f} msg/s  hb p50 {p50} p99 {p99} ms  failures {s.failures}  "
        f"gw {s.gateway_cpu_cores:.2f} cores {s.gateway_rss_mib:,.0f} MiB  "
        f"locust {s.locust_cpu_cores:.2f} cores  machine {s.machine_busy_cores:.2f}{conv}"
    )


def execute(cfg: RunConfig, progress: Any = print) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = cfg.results / f"{stamp}-{cfg.transport}-{cfg.agents}{'-' + cfg.label if cfg.label else ''}"
    workdir.mkdir(parents=True, exist_ok=True)
    gateways_n, workers_n = _processes(cfg.agents, cfg.gateways), _processes(cfg.agents, cfg.workers)
    progress(
        f"scale run: {cfg.agents:,} {cfg.transport} agents, heartbeat {cfg.heartbeat:g} s, "
        f"{gateways_n} gateways, {workers_n} Locust workers, ramp ~{cfg.ramp:.0f} s, hold {cfg.hold:g} s; "
        f"results in {workdir}"
    )
    samples: list[Sample] = []
    events: dict[str, float] = {}
    change = _Change()
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp, running(workdir) as cluster:
        redis_port = cluster.redis()
        gateways = [
            cluster.gateway(i, redis_port, Path(tmp) / "gateway.db", _gateway_args(cfg))
            for i in range(gateways_n)
        ]
        idle_rss = rss_mib([g.proc for g in gateways])
        progress(f"redis-server and {gateways_n} gateways ready ({idle_rss:,.0f} MiB RSS idle)")
        master, workers = _locust(cluster, cfg, gateways, workdir)
        gw_cpu = CpuMeter([g.proc for g in gateways])
        locust_cpu = CpuMeter([master, *workers])
        redis_cpu = CpuMeter([p for p in cluster.procs if p.name == "redis"])
        start = time.monotonic()
        busy_before = procstat.core_busy(None)
        last_t, last_messages = start, gateway_counters(gateways).messages
        hold_started: float | None = None
        at_hold = last_counters = GatewayCounters()
        changer: threading.Thread | None = None
        profiled = False
        deadline = start + cfg.ramp * 3 + cfg.hold + 300
        while master.process.poll() is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"the run overran its bound of {deadline - start:.0f} s")
            for proc in (*workers, *(g.proc for g in gateways)):
                proc.check()
            time.sleep(cfg.sample_every)
            now = time.monotonic()
            dt = now - last_t
            counters = gateway_counters(gateways)
            if master.process.poll() is None:
                # Locust still running: the agents are still connected, so this counts the hold.
                last_counters = counters
            row = locust_latest(workdir / "locust_stats_history.csv")
            busy = procstat.core_busy(None)
            t = now - start
            if hold_started is None and counters.connected >= cfg.agents and row.users >= cfg.agents:
                hold_started, at_hold = t, counters
                events["hold"] = t
                progress(f"all {cfg.agents:,} agents connected after {t:.0f} s; holding {cfg.hold:g} s")
            sample = Sample(
                t=round(t, 1),
                phase="ramp" if hold_started is None else "hold",
                users=row.users,
                connected=int(counters.connected),
                gateway_messages_per_s=round((counters.messages - last_messages) / dt, 1),
                locust_requests_per_s=row.requests_per_s,
                failures=row.failures,
                heartbeat_p50_ms=row.heartbeat_p50,
                heartbeat_p99_ms=row.heartbeat_p99,
                gateway_cpu_cores=round(gw_cpu.cores(dt), 3),
                gateway_rss_mib=round(rss_mib([g.proc for g in gateways]), 1),
                locust_cpu_cores=round(locust_cpu.cores(dt), 3),
                locust_rss_mib=round(rss_mib([master, *workers]), 1),
                redis_cpu_cores=round(redis_cpu.cores(dt), 3),
                machine_busy_cores=round((busy - busy_before) / dt, 3),
            )
            busy_before, last_t, last_messages = busy, now, counters.messages
            samples.append(sample)
            progress(_progress(t, sample, cfg.agents, change))
            if (
                hold_started is not None
                and cfg.change_at is not None
                and changer is None
                and t >= hold_started + cfg.change_at
            ):
                events["config change"] = t
                progress(f"changing config {CONFIG_NAME!r} for every agent")
                changer = threading.Thread(
                    target=_change_config,
                    args=(gateways[0], cfg.agents, cfg.converge_timeout, change),
                    daemon=True,
                )
                changer.start()
            if cfg.profile_seconds and not profiled and hold_started is not None and t >= hold_started + 10:
                profiled = _profile(cluster, gateways[0], cfg.profile_seconds, workdir) is not None
        if changer is not None:
            changer.join(cfg.converge_timeout + 30)
        rollout_now = admin(gateways[0].admin_port, "GET", "/api/v1/agents?limit=1")
        progress(f"Locust finished after {time.monotonic() - start:.0f} s; stopping every process")
    requests = report.request_stats(workdir / "locust_stats.csv")
    summary = _summarize(
        cfg, samples, requests, change, idle_rss, gateways_n, workers_n, hold_started, rollout_now
    )
    summary["hold"]["gateway_message_handling_ms"] = {
        f"p{q * 100:g}": _ms(server_quantile(at_hold, last_counters, q)) for q in (0.5, 0.95, 0.99, 0.999)
    }
    summary["results"] = str(workdir)
    report.write_summary(summary, workdir / "summary.json")
    report.write_timeline(samples, workdir / "timeline.csv")
    title = f"{cfg.agents:,} {cfg.transport} agents, heartbeat {cfg.heartbeat:g} s, {gateways_n} gateways"
    report.write_chart(samples, events, workdir / "chart.png", title)
    return summary


def _summarize(
    cfg: RunConfig,
    samples: Sequence[Sample],
    requests: dict[str, dict[str, Any]],
    change: _Change,
    idle_rss: float,
    gateways: int,
    workers: int,
    hold_started: float | None,
    agents_page: tuple[int, Any],
) -> dict[str, Any]:
    hold = [s for s in samples if s.phase == "hold"] or list(samples[-3:])
    peak = max((s.connected for s in samples), default=0)
    total = requests.get("Aggregated", {})
    convergence = requests.get("CONFIG convergence", {})
    heartbeat = requests.get(f"{'WS' if cfg.transport == 'websocket' else 'POST'} heartbeat", {})
    rss = statistics.fmean(s.gateway_rss_mib for s in hold) if hold else 0.0
    windows = [s.heartbeat_p99_ms for s in hold if s.heartbeat_p99_ms is not None]
    problems = []
    if total.get("failures", 1):
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
        "agents": {"target": cfg.agents, "peak_connected": peak, "admin_api_total": _total(agents_page)},
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
            "server_seconds": change.server_seconds,
            "matched": change.matched,
            "rollout": change.rollout,
            "agents_applied": convergence.get("requests", 0),
            "agent_p50_s": _seconds(convergence.get("p50_ms")),
            "agent_p99_s": _seconds(convergence.get("p99_ms")),
            "agent_max_s": _seconds(convergence.get("p100_ms")),
        },
        "aims": {"heartbeat_p99_ms": AIM_P99_MS, "convergence_s": AIM_CONVERGENCE_S},
        "problems": problems,
        "passed": not problems,
    }


def _total(page: tuple[int, Any]) -> int | None:
    status, body = page
    return int(body.get("total", 0)) if status == 200 and isinstance(body, dict) and "total" in body else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 2)


def _parser() -> argparse.ArgumentParser:
    d = RunConfig()
    p = argparse.ArgumentParser(
        prog="python -m loadtest.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--agents", type=int, default=d.agents, help="simulated agents to reach and hold")
    p.add_argument("--transport", choices=sorted(USER_CLASS), default=d.transport)
    p.add_argument("--heartbeat", type=float, default=d.heartbeat, help="seconds between heartbeats")
    p.add_argument(
        "--spawn-rate", type=float, default=d.spawn_rate, help="new agents per second while ramping"
    )
    p.add_argument("--hold", type=float, default=d.hold, help="seconds to hold every agent connected")
    p.add_argument(
        "--config-change-after",
        type=float,
        default=None,
        help="seconds into the hold to change the config (default: half way; negative: never)",
    )
    p.add_argument("--converge-timeout", type=float, default=d.converge_timeout)
    p.add_argument(
        "--gateways", type=int, default=0, help=f"gateway processes (default: one per {PER_PROCESS:,} agents)"
    )
    p.add_argument(
        "--workers", type=int, default=0, help=f"Locust workers (default: one per {PER_PROCESS:,} agents)"
    )
    p.add_argument(
        "--sample-every", type=float, default=d.sample_every, help="seconds between progress lines"
    )
    p.add_argument("--results", type=Path, default=d.results)
    p.add_argument("--gateway-arg", action="append", default=[], help="extra `opamp-gateway serve` argument")
    p.add_argument(
        "--profile-seconds", type=float, default=0.0, help="py-spy gateway 0 this long in the hold"
    )
    p.add_argument("--label", default="", help="appended to the results folder name")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.agents < 1 or args.spawn_rate <= 0 or args.heartbeat <= 0 or args.hold < 0:
        _parser().error("--agents, --spawn-rate and --heartbeat must be positive and --hold not negative")
    cfg = RunConfig(
        agents=args.agents,
        transport=args.transport,
        heartbeat=args.heartbeat,
        spawn_rate=args.spawn_rate,
        hold=args.hold,
        config_change_after=args.config_change_after,
        converge_timeout=args.converge_timeout,
        gateways=args.gateways,
        workers=args.workers,
        sample_every=args.sample_every,
        results=args.results,
        gateway_args=tuple(args.gateway_arg),
        profile_seconds=args.profile_seconds,
        label=args.label,
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = execute(cfg, progress=lambda line: print(line, flush=True))
    except ClusterError as exc:
        print(f"scale run failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    print(report.table(summary))
    print(f"results: {summary['results']}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
