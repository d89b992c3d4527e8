"""The HTTP heartbeat benchmark: the gateway against the baseline, same load, same core, same run.

Phases: start the gateway; enroll every simulated agent (timed on its own, not compared); check a
sample of heartbeat replies and size the baseline's fixed reply after them; start the baseline; one
warm-up per target; then `rounds` timed rounds, each one wrk run per target (the order alternates so a
drift in the machine's speed hits both); a last sample of fully decoded replies.
"""

from __future__ import annotations

import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench import agents as agent_io, gateway_metrics, profile as profiling, targets
from bench.baseline import FIXED_UID, OPAMP_PATH
from bench.fleet import make_fleet
from bench.targets import HOST, Cores, Target
from bench.wrk import Mode, PhaseResult, WrkError, find_wrk, run_phase
from gateway.proto import opamp_pb2 as pb
from harness import machine, procstat
from harness.agent import SimAgent

logger = logging.getLogger("bench.http_bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Issue 13: a node answering HTTP heartbeats at no less than 0.8 of what the bare stack does.
AIM = 0.8

Progress = Callable[[str], None]


@dataclass(frozen=True)
class HttpBenchConfig:
    duration: int = 10
    warmup: int = 3
    rounds: int = 3
    agents: int = 5000
    connections: int = 64
    threads: int = 1
    baseline_loop: str = "uvloop"
    sample: int = 50
    output: Path = RESULTS_DIR / "latest-http.json"
    profile: bool = False


@dataclass
class TargetRun:
    """One target's side of the run: its process, its fleet, how wrk should treat its replies."""

    name: str
    target: Target
    fleet: list[SimAgent]
    mode: Mode
    rounds: list[PhaseResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    resynced: int = 0


def _phase_line(label: str, name: str, result: PhaseResult) -> str:
    return (
        f"{label:<10} {name:<9} {result.rps:>9,.0f} req/s  p50 {result.percentile_ms('50'):6.2f} ms"
        f"  p99 {result.percentile_ms('99'):6.2f} ms  errors {result.errors}"
        f"  CPU: server {result.server_load:.0%}, its core {result.core_load:.0%}, wrk {result.wrk_load:.0%}"
    )


class HttpBench:
    def __init__(self, cfg: HttpBenchConfig, cores: Cores, workdir: Path, progress: Progress) -> None:
        self.cfg = cfg
        self.cores = cores
        self.workdir = workdir
        self.progress = progress

    def phase(self, run: TargetRun, label: str, seconds: int, measured: bool) -> PhaseResult:
        cfg = self.cfg
        gateway = run.mode == "track"
        admin = run.target.admin_port
        before = gateway_metrics.scrape(HOST, admin) if gateway and admin else None
        cpu_before, wall_before = procstat.process_cpu(run.target.pid), time.monotonic()
        core_before = procstat.core_busy(self.cores.server)
        result = run_phase(
            run.fleet,
            run.target.port,
            OPAMP_PATH,
            run.mode,
            seconds,
            cfg.connections,
            cfg.threads,
            self.cores,
            self.workdir,
            f"{run.name}-{label.replace('/', '-').replace(' ', '-')}",
        )
        server_cpu = procstat.process_cpu(run.target.pid) - cpu_before
        core_cpu = procstat.core_busy(self.cores.server) - core_before
        wall = time.monotonic() - wall_before
        result = replace(result, server_load=server_cpu / wall, core_load=core_cpu / wall)
        if before is not None and admin:
            delta = gateway_metrics.scrape(HOST, admin) - before
            for problem in gateway_metrics.problems(delta, result.requests, cfg.connections):
                run.problems.append(f"{label}: {problem}")
        if result.errors:
            run.problems.append(f"{label}: {result.errors} errors {result.socket_errors} {result.checks}")
        if gateway and result.in_flight:
            time.sleep(0.2)  # let the gateway finish what wrk left in flight
            run.resynced += agent_io.resync(
                HOST, run.target.port, OPAMP_PATH, result.in_flight, cfg.connections
            )
        if measured:
            run.rounds.append(result)
        self.progress(_phase_line(label, run.name, result))
        return result

    def measure(self, gateway: TargetRun, baseline: TargetRun) -> None:
        cfg = self.cfg
        if cfg.warmup > 0:
            for run in (gateway, baseline):
                self.phase(run, "warm-up", cfg.warmup, measured=False)
        for index in range(cfg.rounds):
            order = (gateway, baseline) if index % 2 == 0 else (baseline, gateway)
            for run in order:
                self.phase(run, f"round {index + 1}/{cfg.rounds}", cfg.duration, measured=True)


def _machine_load(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds`: other work on the machine skews every number."""
    before = procstat.core_busy(None)
    time.sleep(seconds)
    return (procstat.core_busy(None) - before) / seconds / (os.cpu_count() or 1)


def _baseline_reply(gateway_reply: bytes) -> bytes:
    """The gateway's heartbeat reply with a fixed uid: same fields, same size."""
    reply = pb.ServerToAgent.FromString(gateway_reply)
    reply.instance_uid = FIXED_UID
    return reply.SerializeToString()


def _summary(run: TargetRun) -> dict[str, object]:
    requests = sum(r.requests for r in run.rounds)
    seconds = sum(r.seconds for r in run.rounds)
    return {
        "requests_per_second": requests / seconds if seconds else 0.0,
        "requests": requests,
        "seconds": seconds,
        # Median over the rounds of each round's percentile.
        "p50_ms": statistics.median(r.percentile_ms("50") for r in run.rounds),
        "p90_ms": statistics.median(r.percentile_ms("90") for r in run.rounds),
        "p99_ms": statistics.median(r.percentile_ms("99") for r in run.rounds),
        "errors": sum(r.errors for r in run.rounds),
        # Share of one core used: the server's should be near 100%, wrk's well below.
        "server_cpu": statistics.mean(r.server_load for r in run.rounds),
        # How busy the server's core was: far above server_cpu means other processes took it.
        "server_core_busy": statistics.mean(r.core_load for r in run.rounds),
        "wrk_cpu": statistics.mean(r.wrk_load for r in run.rounds),
        "rounds": [
            {
                "requests_per_second": r.rps,
                "requests": r.requests,
                "seconds": r.seconds,
                "latency_us": r.latency_us,
                "socket_errors": r.socket_errors,
                "reply_checks": r.checks,
                "server_cpu": r.server_load,
                "server_core_busy": r.core_load,
                "wrk_cpu": r.wrk_load,
            }
            for r in run.rounds
        ],
    }


def run(cfg: HttpBenchConfig, progress: Progress, argv: list[str]) -> dict[str, object]:
    wrk = find_wrk()
    if wrk is None:
        raise WrkError("wrk is not installed: run `bash scripts/install-bench-deps.sh` (apt-get install wrk)")
    cores = targets.choose_cores()
    if cores.load is not None:
        # This process (enrollment, checks) stays off the server's core too.
        os.sched_setaffinity(0, {cores.load})
    progress(f"pinning    {cores.describe()}")
    idle_load = _machine_load()
    progress(f"machine    {idle_load:.0%} of all CPUs busy before the run (should be near 0%)")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="opamp-bench-") as tmp:
        workdir = Path(tmp)
        bench = HttpBench(cfg, cores, workdir, progress)
        with targets.gateway(cores, workdir) as gw:
            port = gw.port
            fleet = make_fleet(cfg.agents)
            enrolled = agent_io.enroll(HOST, port, OPAMP_PATH, fleet, cfg.connections)
            progress(
                f"enroll     gateway   {enrolled.agents} agents in {enrolled.seconds:.1f} s "
                f"({enrolled.rate:,.0f} full reports/s; not compared)"
            )
            probe = agent_io.sample_heartbeats(HOST, port, OPAMP_PATH, fleet[: cfg.sample])
            reply = _baseline_reply(probe[0])
            with targets.baseline(reply, cfg.baseline_loop, cores, workdir) as bl:
                progress(f"started    gateway pid {gw.pid}, baseline pid {bl.pid} ({cfg.baseline_loop} loop)")
                gateway = TargetRun("gateway", gw, fleet, "track")
                # The baseline enrolls no one: its agents start as if their full report (sequence_num 0)
                # had been sent, so wrk's heartbeats carry 1, 2, ... as the gateway's do.
                bl_fleet = make_fleet(cfg.agents)
                for agent in bl_fleet:
                    agent.seq = 0
                baseline = TargetRun("baseline", bl, bl_fleet, "fixed")
                bench.measure(gateway, baseline)
            final = agent_io.sample_heartbeats(HOST, port, OPAMP_PATH, fleet[-cfg.sample :])
            progress(f"checked    gateway   {len(probe) + len(final)} heartbeat replies decoded: all valid")
            hot_spots = _profile_gateway(bench, gateway, RESULTS_DIR, progress) if cfg.profile else None
    gw_summary, bl_summary = _summary(gateway), _summary(baseline)
    gw_rps = float(gw_summary["requests_per_second"])  # type: ignore[arg-type]
    bl_rps = float(bl_summary["requests_per_second"])  # type: ignore[arg-type]
    problems = gateway.problems + baseline.problems
    return {
        "benchmark": "http-heartbeat",
        "started_at": started_at,
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "pinning": cores.describe(),
        "machine_busy_before": idle_load,
        "machine": machine.describe(wrk),
        "enrollment": {"agents": enrolled.agents, "seconds": enrolled.seconds, "per_second": enrolled.rate},
        "reply_bytes": {"gateway": len(probe[0]), "baseline": len(reply)},
        "targets": {"gateway": gw_summary, "baseline": bl_summary},
        "ratio": gw_rps / bl_rps if bl_rps else 0.0,
        "round_ratios": [
            g.rps / b.rps for g, b in zip(gateway.rounds, baseline.rounds, strict=True) if b.rps
        ],
        "aim": AIM,
        "checks": {
            "sampled_replies": len(probe) + len(final),
            "resynced_agents": gateway.resynced,
            "problems": problems,
        },
        "profile": hot_spots,
        "valid": not problems,
        "python_executable": sys.executable,
    }


def _profile_gateway(
    bench: HttpBench, run: TargetRun, results_dir: Path, progress: Progress
) -> dict[str, object]:
    recording = profiling.Recording(run.target.pid, bench.cfg.duration, bench.cores, bench.workdir)
    result = bench.phase(run, "profile", bench.cfg.duration, measured=False)
    saved = results_dir / "latest-http-profile.folded"
    summary = recording.finish(result.seconds, saved)
    progress(
        f"profile    gateway   {summary['samples']} samples under load (py-spy, untimed); stacks in {saved}"
    )
    return summary
