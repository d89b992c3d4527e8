"""The scale runner: `python -m loadtest.run --agents 100000`.

Starts, on this machine and on loopback only, a redis-server, N gateways sharing one SQLite file
and a Locust master with its workers; ramps to the target agent count, holds, changes a config
mid-hold and measures how long every agent takes to apply it (and, if asked, kills a gateway and
watches its agents reconnect to the others); measures what each agent costs the load generator and
the gateways; prints progress every few seconds;
stops everything it started; and writes the summary (JSON), the timeline (CSV) and a chart (PNG)
into loadtest/results/<run>/. Every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.admin import admin
from harness.process import ProcessError
from loadtest import config, processes, report
from loadtest.cluster import Cluster, ClusterError
from loadtest.config import PER_PROCESS, SPAWN_PER_WORKER, USER_CLASS, RunConfig
from loadtest.monitor import rss_mib, server_quantile
from loadtest.watch import Watch

logger = logging.getLogger("loadtest.run")


def execute(cfg: RunConfig, progress: Any = print) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = cfg.results / f"{stamp}-{cfg.transport}-{cfg.agents}{'-' + cfg.label if cfg.label else ''}"
    workdir.mkdir(parents=True, exist_ok=True)
    gateways_n, workers_n = config.gateways(cfg), config.workers(cfg)
    progress(
        f"scale run: {cfg.agents:,} {cfg.transport} agents, heartbeat {cfg.heartbeat:g} s, "
        f"{gateways_n} gateways, {workers_n} Locust workers, ramp ~{cfg.ramp:.0f} s, hold {cfg.hold:g} s; "
        f"results in {workdir}"
    )
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp, Cluster(workdir) as cluster:
        redis_url = cluster.redis()
        gateways = [
            cluster.gateway(i, redis_url, Path(tmp) / "gateway.db", config.gateway_args(cfg))
            for i in range(gateways_n)
        ]
        idle_rss = rss_mib(gateways)
        progress(f"redis-server and {gateways_n} gateways ready ({idle_rss:,.0f} MiB RSS idle)")
        watch = Watch(
            cfg, cluster, workdir, gateways, processes.locust(cluster, cfg, gateways, workdir), progress
        )
        watch.run()
        watch.change.join()
        watch.kill.join()
        fleet_summary = admin(gateways[0].admin_port, "GET", "/api/v1/fleet/summary")
        # Locust writes its final statistics when told to stop (SIGTERM), as at the end of -t.
        cluster.stop(watch.master, timeout=60)
        progress(f"Locust finished after {time.monotonic() - watch.start:.0f} s; stopping every process")
    requests = report.request_stats(workdir / "locust_stats.csv")
    summary = report.summarize(cfg, watch, requests, idle_rss, gateways_n, workers_n, fleet_summary)
    summary["hold"]["gateway_message_handling_ms"] = {
        f"p{q * 100:g}": report.to_ms(server_quantile(watch.at_hold, watch.last_counters, q))
        for q in (0.5, 0.95, 0.99, 0.999)
    }
    summary["results"] = str(workdir)
    summary["processes"] = [{"name": p.name, "pid": p.pid, "returncode": p.returncode} for p in cluster.procs]
    report.write_summary(summary, workdir / "summary.json")
    report.write_timeline(watch.samples, workdir / "timeline.csv")
    title = f"{cfg.agents:,} {cfg.transport} agents, heartbeat {cfg.heartbeat:g} s, {gateways_n} gateways"
    report.write_chart(watch.samples, watch.events, workdir / "chart.png", title, watch.kill.curve)
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
        "--gateways",
        type=int,
        default=0,
        help=f"gateway processes (default: one per {PER_PROCESS:,} agents)",
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
    p.add_argument(
        "--kill-gateway-after",
        type=float,
        default=None,
        help="seconds into the hold to kill the last gateway (SIGKILL) and watch its agents reconnect",
    )
    p.add_argument(
        "--reconnect-within",
        type=float,
        default=d.reconnect_within,
        help="seconds the killed gateway's agents may take to be connected elsewhere",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.agents < 1 or args.spawn_rate <= 0 or args.heartbeat <= 0 or args.hold < 0:
        _parser().error("--agents, --spawn-rate and --heartbeat must be positive and --hold not negative")
    if args.kill_gateway_after is not None and not (0 <= args.kill_gateway_after < args.hold):
        _parser().error("--kill-gateway-after must fall inside --hold")
    if args.kill_gateway_after is not None and args.gateways == 1:
        _parser().error("--kill-gateway-after needs at least 2 gateways for the agents to move to")
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
        kill_gateway_after=args.kill_gateway_after,
        reconnect_within=args.reconnect_within,
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
