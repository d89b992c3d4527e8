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
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import procstat
from harness.admin import admin
from harness.gateway import GatewayProcess
from harness.ports import free_port
from harness.process import Process, ProcessError
from loadtest import report
from loadtest.change import CONFIG_NAME, ConfigChange
from loadtest.cluster import HOST, REPO, Cluster, ClusterError, target
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

# Sockets per process: gateways and Locust workers must stay under the 20,000 open files a process
# may have here, with room for the store, logs and Redis.
PER_PROCESS = 15_000
# Locust warns that more than 100 new users per second per worker "is known to cause issues": a
# worker busy connecting falls behind on everything else.
SPAWN_PER_WORKER = 100.0
USER_CLASS = {"websocket": "WebSocketAgent", "http": "HttpAgent"}


@dataclass(frozen=True)
class RunConfig:
    agents: int = 1000
    transport: str = "websocket"
    heartbeat: float = 30.0
    spawn_rate: float = 500.0
    hold: float = 60.0
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


def _processes(agents: int, asked: int) -> int:
    return asked if asked > 0 else max(1, math.ceil(agents / PER_PROCESS))


def _workers(cfg: RunConfig) -> int:
    if cfg.workers > 0:
        return cfg.workers
    return max(_processes(cfg.agents, 0), math.ceil(cfg.spawn_rate / SPAWN_PER_WORKER))


def _locust(
    cluster: Cluster, cfg: RunConfig, gateways: Sequence[GatewayProcess], workdir: Path
) -> tuple[Process, list[Process]]:
    port = free_port()
    workers = _workers(cfg)
    # Only a bound: the runner ends the test itself (SIGTERM) once the hold and the config change
    # are over, however long the ramp took.
    run_time = math.ceil(_bound(cfg))
    common = [
        sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"),
        USER_CLASS[cfg.transport],
        "--opamp-targets", ",".join(target(g) for g in gateways),
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


def _bound(cfg: RunConfig) -> float:
    """Seconds the whole run may take: a slow ramp (three times the nominal), the hold, the config
    change's own timeout and a minute to stop."""
    return cfg.ramp * 3 + cfg.hold + cfg.converge_timeout + 60


def _gateway_args(cfg: RunConfig) -> list[str]:
    per_gateway = math.ceil(cfg.agents / _processes(cfg.agents, cfg.gateways))
    return [
        # A scale run enrolls its fleet as fast as Locust spawns it.
        "--enrollment-rate", "0",
        "--max-connections", str(min(19_000, int(per_gateway * 1.2) + 100)),
        "--idle-timeout", str(max(600.0, 4 * cfg.heartbeat)),
        *cfg.gateway_args,
    ]  # fmt: skip


def _profile(cluster: Cluster, gateway: GatewayProcess, seconds: float, workdir: Path) -> Process | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        logger.warning("py-spy is not installed; no profile")
        return None
    out = workdir / f"{gateway.name}-profile"
    argv = [exe, "record", "--pid", str(gateway.pid), "--duration", str(int(seconds)), "--rate", "50"]
    cluster.start("py-spy-svg", [*argv, "--format", "flamegraph", "--output", f"{out}.svg"])
    return cluster.start("py-spy-raw", [*argv, "--format", "raw", "--output", f"{out}.folded"])


def _progress(t: float, s: Sample, target: int, change: ConfigChange) -> str:
    p99 = "-" if s.heartbeat_p99_ms is None else f"{s.heartbeat_p99_ms:.0f}"
    p50 = "-" if s.heartbeat_p50_ms is None else f"{s.heartbeat_p50_ms:.0f}"
    conv = f"  config {change.status} {change.applied:,}/{target:,} applied" if change.started else ""
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
    gateways_n, workers_n = _processes(cfg.agents, cfg.gateways), _workers(cfg)
    progress(
        f"scale run: {cfg.agents:,} {cfg.transport} agents, heartbeat {cfg.heartbeat:g} s, "
        f"{gateways_n} gateways, {workers_n} Locust workers, ramp ~{cfg.ramp:.0f} s, hold {cfg.hold:g} s; "
        f"results in {workdir}"
    )
    samples: list[Sample] = []
    events: dict[str, float] = {}
    change = ConfigChange(expected=cfg.agents, timeout=cfg.converge_timeout)
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp, Cluster(workdir) as cluster:
        redis_url = cluster.redis()
        gateways = [
            cluster.gateway(i, redis_url, Path(tmp) / "gateway.db", _gateway_args(cfg))
            for i in range(gateways_n)
        ]
        idle_rss = rss_mib(gateways)
        progress(f"redis-server and {gateways_n} gateways ready ({idle_rss:,.0f} MiB RSS idle)")
        master, workers = _locust(cluster, cfg, gateways, workdir)
        gw_cpu = CpuMeter(gateways)
        locust_cpu = CpuMeter([master, *workers])
        redis_cpu = CpuMeter([p for p in cluster.procs if p.name == "redis"])
        start = time.monotonic()
        busy_before = procstat.core_busy(None)
        last_t, last_messages = start, gateway_counters(gateways).messages
        hold_started: float | None = None
        peak_users = 0
        at_hold = last_counters = GatewayCounters()
        profiled = False
        deadline = start + _bound(cfg) + 60
        while master.returncode is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"the run overran its bound of {deadline - start:.0f} s")
            for proc in (*workers, *gateways):
                proc.check()
            time.sleep(cfg.sample_every)
            now = time.monotonic()
            dt = now - last_t
            counters = gateway_counters(gateways)
            if master.returncode is None:
                # Locust still running: the agents are still connected, so this counts the hold.
                last_counters = counters
            row = locust_latest(workdir / "locust_stats_history.csv")
            busy = procstat.core_busy(None)
            t = now - start
            peak_users = max(peak_users, row.users)
            if row.users == 0 and peak_users > 0:
                # Locust stops every user when its last worker goes missing; the run is over then.
                raise ClusterError(f"Locust dropped all {peak_users:,} users (a worker went missing?)")
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
                gateway_rss_mib=round(rss_mib(gateways), 1),
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
                and not change.started
                and t >= hold_started + cfg.change_at
            ):
                events["config change"] = t
                progress(f"changing config {CONFIG_NAME!r} for every agent")
                change.start(gateways)
            if cfg.profile_seconds and not profiled and hold_started is not None and t >= hold_started + 10:
                profiled = _profile(cluster, gateways[0], cfg.profile_seconds, workdir) is not None
            if hold_started is not None and t >= hold_started + cfg.hold and not change.running:
                progress(f"hold over after {t - hold_started:.0f} s; stopping Locust")
                break
        change.join()
        fleet_summary = admin(gateways[0].admin_port, "GET", "/api/v1/fleet/summary")
        # Locust writes its final statistics when told to stop (SIGTERM), as at the end of -t.
        cluster.stop(master, timeout=60)
        progress(f"Locust finished after {time.monotonic() - start:.0f} s; stopping every process")
    processes = [{"name": p.name, "pid": p.pid, "returncode": p.returncode} for p in cluster.procs]
    requests = report.request_stats(workdir / "locust_stats.csv")
    summary = report.summarize(
        cfg, samples, requests, change, idle_rss, gateways_n, workers_n, hold_started, fleet_summary
    )
    summary["hold"]["gateway_message_handling_ms"] = {
        f"p{q * 100:g}": report.to_ms(server_quantile(at_hold, last_counters, q))
        for q in (0.5, 0.95, 0.99, 0.999)
    }
    summary["results"] = str(workdir)
    summary["processes"] = processes
    report.write_summary(summary, workdir / "summary.json")
    report.write_timeline(samples, workdir / "timeline.csv")
    title = f"{cfg.agents:,} {cfg.transport} agents, heartbeat {cfg.heartbeat:g} s, {gateways_n} gateways"
    report.write_chart(samples, events, workdir / "chart.png", title)
    return summary


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
        "--workers",
        type=int,
        default=0,
        help=f"Locust workers (default: one per {PER_PROCESS:,} agents and per {SPAWN_PER_WORKER:g} agents "
        "spawned per second)",
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
    if args.config_change_after is not None and args.config_change_after >= args.hold:
        _parser().error("--config-change-after must fall inside --hold (negative: no config change)")
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
    except (ClusterError, ProcessError) as exc:
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
