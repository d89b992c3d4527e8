"""Runs wrk with heartbeat.lua for one phase and reads back its result and the agents' sequence numbers."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.fleet import read_state_file, write_agents_file
from bench.targets import HOST, Cores
from harness.agent import SimAgent
from harness.procstat import children_cpu

logger = logging.getLogger("bench.wrk")

SCRIPT = Path(__file__).with_name("heartbeat.lua")
# "track": replies must echo the agent's uid (gateway); "fixed": a fixed reply body (baseline).
Mode = Literal["track", "fixed"]
# Reply checks done by the Lua script that count as errors.
CHECK_ERRORS = ("bad_status", "bad_body", "error_response", "full_state", "unknown_uid", "untracked")


class WrkError(Exception):
    """wrk is missing, failed, or wrote no result."""


@dataclass(frozen=True)
class PhaseResult:
    requests: int
    seconds: float
    # wrk's latency summary (min, max, mean, stdev, percentiles) in microseconds, as wrk reports it.
    latency_us: dict[str, Any]
    percentiles_us: dict[str, float]
    socket_errors: dict[str, int]
    checks: dict[str, int]
    # Agents whose last request got no reply before wrk stopped: the server may or may not have seen it.
    in_flight: list[SimAgent]
    # CPU seconds wrk used (its core must not be the bottleneck).
    wrk_cpu: float = 0.0
    # Share of its core the server used during the phase (filled in by the caller).
    server_load: float = 0.0
    # How busy the server's core was in all (server, kernel, any other process).
    core_load: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + sum(self.checks.get(name, 0) for name in CHECK_ERRORS)

    @property
    def wrk_load(self) -> float:
        """Share of one core wrk used."""
        return self.wrk_cpu / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, p: str) -> float:
        return self.percentiles_us[p] / 1000.0


def find_wrk() -> str | None:
    return shutil.which("wrk")


def run_phase(
    agents: list[SimAgent],
    port: int,
    path: str,
    mode: Mode,
    duration: int,
    connections: int,
    threads: int,
    cores: Cores,
    workdir: Path,
    name: str,
) -> PhaseResult:
    """One closed-loop wrk run of `duration` seconds; updates every agent's `seq` from the script's state."""
    exe = find_wrk()
    if exe is None:
        raise WrkError("wrk is not installed (bash scripts/install-bench-deps.sh installs it)")
    agents_file = workdir / f"{name}.agents"
    state_file = workdir / f"{name}.state"
    result_file = workdir / f"{name}.json"
    write_agents_file(agents, agents_file)
    for stale in (state_file, result_file):
        stale.unlink(missing_ok=True)
    command = [
        *cores.prefix(cores.load),
        exe,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={duration}s",
        "--timeout=5s",
        f"--script={SCRIPT}",
        f"http://{HOST}:{port}{path}",
        "--",
        str(agents_file),
        mode,
        str(threads),
        str(state_file),
        str(result_file),
    ]
    logger.debug("running %s", " ".join(command))
    cpu_before = children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0 or not result_file.exists():
        raise WrkError(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    wrk_cpu = children_cpu() - cpu_before
    raw: dict[str, Any] = json.loads(result_file.read_text())
    in_flight = read_state_file(agents, state_file)
    return PhaseResult(
        requests=int(raw["requests"]),
        seconds=raw["duration_us"] / 1e6,
        latency_us=raw["latency_us"],
        percentiles_us={k: float(v) for k, v in raw["latency_us"]["percentiles"].items()},
        socket_errors={k: int(v) for k, v in raw["errors"].items()},
        checks={k: int(v) for k, v in raw["checks"].items()},
        in_flight=in_flight,
        wrk_cpu=wrk_cpu,
    )
