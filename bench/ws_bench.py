"""The WebSocket heartbeat benchmark: the gateway against the baseline's WebSocket echo endpoint, same
load, same core, same run; then the memory each idle WebSocket agent costs.

Phases: start the gateway; connect every simulated agent on its own socket, each enrolling with a
full report (timed on its own, not compared); check a sample of heartbeat replies and size the
baseline's fixed reply after them; start the baseline and connect as many agents to it; one warm-up
per target; then `rounds` timed rounds, each one closed-loop phase per target (the order alternates
so a drift in the machine's speed hits both); a last sample of fully decoded replies. Then, on a
fresh gateway and a fresh baseline, resident memory with `idle_agents` idle sockets (bench.ws_memory).
The harness is the load generator: it runs on the load core on uvloop (bench.ws_client).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop

from bench import gateway_metrics, targets, ws_memory
from bench.agents import ReplyError
from bench.baseline import FIXED_UID, OPAMP_PATH
from bench.fleet import make_fleet
from bench.profile import Recording
from bench.targets import HOST, Cores, Target
from bench.ws_load import (
    WsAgent,
    WsPhaseResult,
    close_fleet,
    closed_loop,
    connect_fleet,
    expected_reply,
    fixed_check,
    gateway_check,
    sample_heartbeats,
)
from gateway.opamp import framing
from gateway.proto import opamp_pb2 as pb
from harness import machine, procstat

logger = logging.getLogger("bench.ws_bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
AIM = 0.70
MEMORY_AIM_KIB = 30.0
# File descriptors this process needs besides its sockets (logs, pipes, /proc reads).
_SPARE_FILES = 200

Progress = Callable[[str], None]


class FileLimitError(Exception):
    """More sockets asked for than the open-files limit allows (one process holds them all)."""


@dataclass(frozen=True)
class WsBenchConfig:
    duration: int = 10
    warmup: int = 3
    rounds: int = 3
    agents: int = 200
    connect_concurrency: int = 50
    baseline_loop: str = "uvloop"
    sample: int = 50
    idle_agents: int = 5000
    idle_seconds: float = 5.0
    output: Path = RESULTS_DIR / "latest-ws.json"
    profile: bool = False


@dataclass
class WsTargetRun:
    """One target's side of the run: its process, its agents on their sockets, its results."""

    name: str
    target: Target
    fleet: list[WsAgent]
    # The gateway's replies carry each agent's uid; the baseline's are all the same.
    track_uid: bool
    rounds: list[WsPhaseResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _phase_line(label: str, name: str, result: WsPhaseResult) -> str:
    return (
        f"{label:<10} {name:<9} {result.rps:>9,.0f} msg/s  p50 {result.percentile_ms('50'):6.2f} ms"
        f"  p99 {result.percentile_ms('99'):6.2f} ms  errors {result.errors}"
        f"  CPU: server {result.server_load:.0%}, its core {result.core_load:.0%},"
        f" generator {result.generator_load:.0%}"
    )


class WsBench:
    def __init__(self, cfg: WsBenchConfig, cores: Cores, workdir: Path, progress: Progress) -> None:
        self.cfg = cfg
        self.cores = cores
        self.workdir = workdir
        self.progress = progress

    async def phase(self, run: WsTargetRun, label: str, seconds: int, measured: bool) -> WsPhaseResult:
        admin = run.target.admin_port
        before = gateway_metrics.scrape(HOST, admin, "websocket") if admin else None
        cpu_before, wall_before = procstat.process_cpu(run.target.pid), time.monotonic()
        core_before = procstat.core_busy(self.cores.server)
        generator_before = procstat.process_cpu(os.getpid())
        result = await closed_loop(run.fleet, seconds, run.track_uid)
        wall = time.monotonic() - wall_before
        result.wall = wall
        result.server_cpu = procstat.process_cpu(run.target.pid) - cpu_before
        result.core_busy = procstat.core_busy(self.cores.server) - core_before
        result.generator_cpu = procstat.process_cpu(os.getpid()) - generator_before
        if before is not None and admin:
            delta = gateway_metrics.scrape(HOST, admin, "websocket") - before
            # Every heartbeat sent was answered before the phase ended: the counts must match exactly.
            for problem in gateway_metrics.problems(delta, result.sent, 0, "websocket"):
                run.problems.append(f"{label}: {problem}")
        if result.errors:
            checks = {k: v for k, v in result.checks.items() if v}
            run.problems.append(f"{label}: {run.name}: {result.errors} bad replies {checks}")
            run.problems += [f"{label}: {run.name}: {example}" for example in result.examples[:3]]
        if measured:
            run.rounds.append(result)
        self.progress(_phase_line(label, run.name, result))
        return result

    async def measure(self, gateway: WsTargetRun, baseline: WsTargetRun) -> None:
        cfg = self.cfg
        if cfg.warmup > 0:
            for run in (gateway, baseline):
                await self.phase(run, "warm-up", cfg.warmup, measured=False)
        for index in range(cfg.rounds):
            order = (gateway, baseline) if index % 2 == 0 else (baseline, gateway)
            for run in order:
                await self.phase(run, f"round {index + 1}/{cfg.rounds}", cfg.duration, measured=True)


async def _machine_load(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds`: other work on the machine skews every number."""
    before = procstat.core_busy(None)
    await asyncio.sleep(seconds)
    return (procstat.core_busy(None) - before) / seconds / (os.cpu_count() or 1)


def _raise_file_limit(cfg: WsBenchConfig) -> int:
    """Both throughput fleets are open at once, the idle fleet alone; targets inherit the limit."""
    needed = max(2 * cfg.agents, cfg.idle_agents + ws_memory.WARM_AGENTS) + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed > hard:
        raise FileLimitError(
            f"{needed} open files needed, the hard limit is {hard}: lower --agents or --idle-agents "
            "(each side of a socket holds one file: this process all client ends, each target its own)"
        )
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def _baseline_reply(gateway_reply: bytes) -> bytes:
    """The gateway's framed heartbeat reply with a fixed uid: same fields, same size."""
    reply = pb.ServerToAgent.FromString(framing.decode(gateway_reply))
    reply.instance_uid = FIXED_UID
    return framing.encode(reply.SerializeToString())


def _template(probe: list[bytes], fleet: list[WsAgent]) -> pb.ServerToAgent:
    """The gateway's heartbeat reply, which differs between agents only by uid (checked)."""
    template = pb.ServerToAgent.FromString(framing.decode(probe[0]))
    for reply, item in zip(probe, fleet, strict=False):
        if reply != expected_reply(template, item.agent.uid):
            raise ReplyError(f"heartbeat replies differ by more than the uid: {reply.hex()}")
    return template


def _summary(run: WsTargetRun) -> dict[str, object]:
    replies = sum(r.replies for r in run.rounds)
    sent = sum(r.sent for r in run.rounds)
    seconds = sum(r.seconds for r in run.rounds)
    return {
        "messages_per_second": replies / seconds if seconds else 0.0,
        "messages": replies,
        "seconds": seconds,
        # Median over the rounds of each round's percentile.
        "p50_ms": statistics.median(r.percentile_ms("50") for r in run.rounds),
        "p90_ms": statistics.median(r.percentile_ms("90") for r in run.rounds),
        "p99_ms": statistics.median(r.percentile_ms("99") for r in run.rounds),
        "errors": sum(r.errors for r in run.rounds),
        # Share of one core used: the server's should be near 100%, the generator's well below.
        "server_cpu": statistics.mean(r.server_load for r in run.rounds),
        # How busy the server's core was: far above server_cpu means other processes took it.
        "server_core_busy": statistics.mean(r.core_load for r in run.rounds),
        "generator_cpu": statistics.mean(r.generator_load for r in run.rounds),
        # CPU time per message, user + system: what a message costs, whoever else shares the core.
        "server_us_per_message": 1e6 * sum(r.server_cpu for r in run.rounds) / sent if sent else 0.0,
        "generator_us_per_message": 1e6 * sum(r.generator_cpu for r in run.rounds) / sent if sent else 0.0,
        "rounds": [
            {
                "messages_per_second": r.rps,
                "messages": r.replies,
                "sent": r.sent,
                "seconds": r.seconds,
                "latency_ms": r.latency_ms,
                "reply_checks": r.checks,
                "server_cpu": r.server_load,
                "server_core_busy": r.core_load,
                "generator_cpu": r.generator_load,
            }
            for r in run.rounds
        ],
    }


async def _memory(
    cfg: WsBenchConfig, cores: Cores, workdir: Path, baseline_reply: bytes, progress: Progress
) -> dict[str, object]:
    """Idle-socket memory of a fresh gateway, then of a fresh baseline."""
    mem_cfg = ws_memory.MemoryConfig(cfg.idle_agents, cfg.idle_seconds, cfg.connect_concurrency, OPAMP_PATH)
    memdir = workdir / "memory"
    memdir.mkdir()
    with targets.gateway(cores, memdir) as gw:
        gateway = await ws_memory.measure(gw, mem_cfg, gateway_check, progress)
    with targets.baseline(framing.decode(baseline_reply), cfg.baseline_loop, cores, memdir) as bl:
        baseline = await ws_memory.measure(bl, mem_cfg, fixed_check(baseline_reply), progress)
    return {"gateway": gateway, "baseline": baseline, "aim_kib": MEMORY_AIM_KIB}


async def _run(cfg: WsBenchConfig, progress: Progress, argv: list[str]) -> dict[str, object]:
    files = _raise_file_limit(cfg)
    cores = targets.choose_cores()
    if cores.load is not None:
        # This process is the load generator: off the server's core.
        os.sched_setaffinity(0, {cores.load})
    progress(
        f"pinning    {cores.describe()}; open-files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"
    )
    idle_load = await _machine_load()
    progress(f"machine    {idle_load:.0%} of all CPUs busy before the run (should be near 0%)")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="opamp-bench-ws-") as tmp:
        workdir = Path(tmp)
        bench = WsBench(cfg, cores, workdir, progress)
        with targets.gateway(cores, workdir) as gw:
            port = gw.port
            began = time.perf_counter()
            gw_fleet = await connect_fleet(
                HOST, port, OPAMP_PATH, make_fleet(cfg.agents), cfg.connect_concurrency, gateway_check
            )
            enroll_seconds = time.perf_counter() - began
            progress(
                f"enroll     gateway   {cfg.agents} agents connected and enrolled in {enroll_seconds:.1f} s "
                f"({cfg.agents / enroll_seconds:,.0f} full reports/s; not compared)"
            )
            try:
                probe = await sample_heartbeats(gw_fleet[: cfg.sample])
                template = _template(probe, gw_fleet)
                for item in gw_fleet:
                    item.sock.expected = expected_reply(template, item.agent.uid)
                baseline_reply = _baseline_reply(probe[0])
                with targets.baseline(
                    framing.decode(baseline_reply), cfg.baseline_loop, cores, workdir
                ) as bl:
                    bl_fleet = await connect_fleet(
                        HOST,
                        bl.port,
                        OPAMP_PATH,
                        make_fleet(cfg.agents, seed=2),
                        cfg.connect_concurrency,
                        fixed_check(baseline_reply),
                    )
                    for item in bl_fleet:
                        item.sock.expected = baseline_reply
                    progress(
                        f"started    gateway pid {gw.pid}, baseline pid {bl.pid} ({cfg.baseline_loop} loop)"
                    )
                    gateway = WsTargetRun("gateway", gw, gw_fleet, track_uid=True)
                    baseline = WsTargetRun("baseline", bl, bl_fleet, track_uid=False)
                    try:
                        await bench.measure(gateway, baseline)
                    finally:
                        await close_fleet(bl_fleet)
                final = await _final_sample(gateway, gw_fleet[-cfg.sample :], len(probe), progress)
                hot_spots = await _profile(bench, gateway) if cfg.profile else None
            finally:
                await close_fleet(gw_fleet)
        memory = await _memory(cfg, cores, workdir, baseline_reply, progress) if cfg.idle_agents else None
    gw_summary, bl_summary = _summary(gateway), _summary(baseline)
    gw_rate = float(gw_summary["messages_per_second"])  # type: ignore[arg-type]
    bl_rate = float(bl_summary["messages_per_second"])  # type: ignore[arg-type]
    gw_cost = float(gw_summary["server_us_per_message"])  # type: ignore[arg-type]
    bl_cost = float(bl_summary["server_us_per_message"])  # type: ignore[arg-type]
    problems = gateway.problems + baseline.problems
    if memory is not None:
        for side in ("gateway", "baseline"):
            problems += memory[side]["problems"]  # type: ignore[index]
    described = machine.describe(None)
    del described["wrk"]
    described["load_generator"] = "bench.ws_client: asyncio Protocol on uvloop, in the harness process"
    return {
        "benchmark": "websocket-heartbeat",
        "started_at": started_at,
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "pinning": cores.describe(),
        "open_files_needed": files,
        "machine_busy_before": idle_load,
        "machine": described,
        "enrollment": {
            "agents": cfg.agents,
            "seconds": enroll_seconds,
            "per_second": cfg.agents / enroll_seconds,
        },
        "reply_bytes": {"gateway": len(probe[0]), "baseline": len(baseline_reply)},
        "targets": {"gateway": gw_summary, "baseline": bl_summary},
        "ratio": gw_rate / bl_rate if bl_rate else 0.0,
        # The same comparison by CPU time per message: steadier than throughput when other processes
        # take part of the server's core, but blind to time the server spends waiting.
        "cpu_ratio": bl_cost / gw_cost if gw_cost else 0.0,
        "round_ratios": [
            g.rps / b.rps for g, b in zip(gateway.rounds, baseline.rounds, strict=True) if b.rps
        ],
        "aim": AIM,
        "memory": memory,
        "checks": {"sampled_replies": len(probe) + len(final), "problems": problems},
        "profile": hot_spots,
        "valid": not problems,
        "python_executable": sys.executable,
    }


async def _final_sample(
    gateway: WsTargetRun, fleet: list[WsAgent], probed: int, progress: Progress
) -> list[bytes]:
    """Heartbeats after the load, decoded in full. A failure here is a finding about the phases just
    measured, so it makes the run INVALID rather than ending it without a report."""
    try:
        final = await sample_heartbeats(fleet)
    except ReplyError as exc:
        gateway.problems.append(f"final sample: {exc}")
        return []
    progress(f"checked    gateway   {probed + len(final)} heartbeat replies decoded: all valid")
    return final


async def _profile(bench: WsBench, gateway: WsTargetRun) -> dict[str, object]:
    recording = Recording(gateway.target.pid, bench.cfg.duration, bench.cores, bench.workdir)
    result = await bench.phase(gateway, "profile", bench.cfg.duration, measured=False)
    saved = RESULTS_DIR / "latest-ws-profile.folded"
    summary = recording.finish(result.seconds, saved)
    bench.progress(
        f"profile    gateway   {summary['samples']} samples under load (py-spy, untimed); stacks in {saved}"
    )
    return summary


def run(cfg: WsBenchConfig, progress: Progress, argv: list[str]) -> dict[str, object]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(cfg, progress, argv))
